import pytest


@pytest.fixture(params=["qwen2_vl", "llava", "idefics3"])
def arch(request):
    return request.param
