import pytest


@pytest.fixture(params=["qwen2_vl", "llava"])
def arch(request):
    return request.param
