import pytest

from nnshrink.errors import ConfigError
from nnshrink.recipes import BUILTIN, load_recipe, recipe_from_dict


def test_builtin_recipes_load():
    for name in BUILTIN:
        r = load_recipe(name, "lenet5")
        assert r.stages[-1] == "encode"
    assert load_recipe("deep-compression", "lenet300").stages == ("prune", "share", "encode")


def test_toml_file(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('stages = ["prune", "share", "encode"]\n[prune]\nsparsity = 0.8\nrounds = 2\n'
                 '[prune.layers]\n"conv*" = 0.5\n[share]\nfc_bits = 4\n[encode]\nhuffman = false\n')
    r = load_recipe(str(p))
    assert r.prune.sparsity == 0.8 and r.prune.layers == {"conv*": 0.5} and r.share.fc_bits == 4
    assert r.encode.huffman is False and r.name == "mine"
    assert r.as_dict()["prune"]["rounds"] == 2


@pytest.mark.parametrize("data, words", [
    ({"stages": ["prune", "encode"], "prune": {"sparsty": 0.5}}, ["'sparsty'", "[prune]"]),
    ({"stages": ["share", "prune", "encode"]}, ["makes no sense"]),
    ({"stages": ["prune", "share"]}, ["last stage must be 'encode'"]),
    ({"stages": ["prune", "quantum", "encode"]}, ["unknown stage 'quantum'"]),
    ({"stages": ["prune", "encode"], "prune": {"sparsity": 1.3}}, ["[0, 1)", "1.3"]),
    ({"stages": ["share", "encode"], "share": {"fc_bits": 9}}, ["1..8", "9"]),
    ({"stages": ["prune", "encode"], "prune": {"q": -1.0}}, ["q must be >= 0"]),
    ({"stages": ["prune", "encode"], "share": {"fc_bits": 4}}, ["not in stages"]),
    ({"stages": ["binary", "prune", "encode"]}, ["binary"]),
    ({"stages": ["encode"], "encode": {"fc_index_bits": 2}}, ["3..8"]),
    ({"stages": []}, ["non-empty list"]),
    ({"stages": ["encode"], "colour": "red"}, ["'colour'"]),
])
def test_bad_recipes_fail_loudly(data, words):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(data, "t")
    for w in words:
        assert w in str(err.value)


def test_unknown_recipe_name_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="deep-compression"):
        load_recipe("deep-compresion")
    bad = tmp_path / "bad.toml"
    bad.write_text("stages = [prune")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(str(bad))
