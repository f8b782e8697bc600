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


@pytest.mark.parametrize("stage, key, value, expected", [
    ("encode", "half_dense", "false", "bool"),
    ("encode", "huffman", "no", "bool"),
    ("encode", "search_index_bits", "off", "bool"),
    ("encode", "fc_index_bits", 5.0, "int"),
    ("encode", "layers", {"ip1": "4"}, "int"),
    ("prune", "exclude", 5, "str"),
    ("prune", "exclude", ["ip1", 3], "str"),
    ("prune", "sparsity", "high", "float"),
    ("prune", "sparsity", True, "float"),
    ("prune", "retrain_epochs", float("inf"), "finite"),
    ("prune", "method", 3, "str"),
    ("prune", "layers", {"ip1": "0.5"}, "float"),
    ("prune", "layers", [0.5], "table"),
    ("share", "fc_bits", "5", "int"),
    ("share", "fc_bits", True, "int"),
    ("binary", "half_scales", 1, "bool"),
])
def test_recipe_values_are_type_checked(stage, key, value, expected):
    stages = [stage, "encode"] if stage != "encode" else ["encode"]
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({"stages": stages, stage: {key: value}}, "t")
    msg = str(err.value)
    bad = next(iter(value.values())) if isinstance(value, dict) else value
    assert f"[{stage}]" in msg and key in msg and repr(bad) in msg and expected in msg, msg


def test_recipe_string_exclude_is_one_pattern_and_ints_are_floats():
    r = recipe_from_dict({"stages": ["prune", "encode"], "prune": {"exclude": "conv*", "sparsity": 0,
                                                                   "layers": {"ip1": 1 - 1}}}, "t")
    assert r.prune.exclude == ("conv*",)
    assert r.prune.sparsity == 0.0 and isinstance(r.prune.sparsity, float)
    assert r.prune.layers == {"ip1": 0.0}
    r = recipe_from_dict({"stages": ["prune", "encode"], "prune": {"exclude": ["conv*", "ip3"]}}, "t")
    assert r.prune.exclude == ("conv*", "ip3")


def test_lenet300_default_is_the_benchmarked_candidate():
    """The built-in LeNet-300-100 recipe is the file whose five-seed figures BENCHMARKS.md reports."""
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "recipes" / "lenet300-candidate-j.toml"
    built_in, benchmarked = load_recipe("deep-compression", "lenet300"), load_recipe(str(path), "lenet300")
    for stage in ("prune", "share", "encode"):
        assert built_in.as_dict()[stage] == benchmarked.as_dict()[stage], stage
