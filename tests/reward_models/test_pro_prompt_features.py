"""PRO's prompt features phi(x) (preflab.reward_models.pro_orchestrator.PromptFeatures): counts of the vocabulary's
lower-cased [a-z0-9]+ words, so a word said twice weighs twice in the adapter's linear map."""
import torch

from preflab.reward_models.pro_orchestrator import PromptFeatures


def test_features_count_repeated_words_case_free_and_ignore_unknown_ones():
    features = PromptFeatures.from_prompts(["Shout shout, whisper", "whisper"])
    assert features.vocabulary == ["shout", "whisper"]
    chat = [{"role": "user", "content": "WHISPER whisper whisper"}, {"role": "assistant", "content": "shout"}]
    got = features(["shout SHOUT shout and whisper", "nothing known", chat])
    torch.testing.assert_close(got, torch.tensor([[3.0, 1.0], [0.0, 0.0], [1.0, 3.0]]))
