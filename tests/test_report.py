"""The report's text tables (snapshots) and the honest sizes every ratio divides by."""

import numpy as np
import pytest
import torch

from nnshrink.report import flag_growth, ladder_table, layer_table, ratio_text, short_name
from nnshrink.sizes import dtype_bytes, state_bytes, tensor_bytes


def row(name, params, nonzero, wbits, ibits, nbytes, dtype="float32"):
    return {"name": name, "shape": [params], "encoding": "shared", "dtype": dtype, "params": params,
            "nonzero": nonzero, "weight_bits": wbits, "index_bits": ibits, "bytes": nbytes}


HF_ROWS = [
    row("encoder.layer.0.attention.self.query.weight", 589_824, 58_982, {"before": 5, "after": 3.9},
        {"before": 5, "after": 4.1}, 60_123),
    row("encoder.layer.0.attention.self.query.bias", 768, 768, {"before": 32, "after": 32}, {"before": 0, "after": 0},
        3_072),
    row("position_ids", 512, 511, {"before": 64, "after": 64}, {"before": 0, "after": 0}, 4_096, dtype="int64"),
]

HF_TABLE = """\
tensor                                         params  kept %  weight bits  index bits    bytes % of input
encoder.layer.0.attention.self.query.weight   589,824    10.0      5->3.90     5->4.10   60,123       2.55
encoder.layer.0.attention.self.query.bias         768   100.0    32->32.00           -    3,072     100.00
position_ids                                      512    99.8    64->64.00           -    4,096     100.00"""


def test_layer_table_sizes_names_and_has_no_paper_column_for_other_models():
    text = layer_table(HF_ROWS, None)
    assert text == HF_TABLE
    assert "paper" not in layer_table(HF_ROWS, "lenet5-xnor")
    # an int64 tensor stored raw is 100% of itself, not "200% of float32"
    assert text.splitlines()[-1].endswith("100.00")


LENET_TABLE = """\
tensor        params  kept %  weight bits  index bits    bytes % of input  paper (kept %, weight bits, % after P+Q+H)
ip1.weight   235,200     8.0      5->4.10     5->4.70   25,000       2.66  8%, 6 bits, 2.32%
ip1.bias         300   100.0    16->16.00           -      600      50.00"""


def test_layer_table_shows_the_paper_beside_its_own_models():
    rows = [row("ip1.weight", 235_200, 18_816, {"before": 5, "after": 4.1}, {"before": 5, "after": 4.7}, 25_000),
            row("ip1.bias", 300, 300, {"before": 16, "after": 16}, {"before": 0, "after": 0}, 600)]
    assert layer_table(rows, "lenet300") == LENET_TABLE


def test_long_and_hostile_names_are_escaped_and_shortened():
    name = "a" * 50 + "\x1b[2J" + "b" * 100
    short = short_name(name)
    assert len(short) == 80 and "\x1b" not in short and short.startswith("aaa") and short.endswith("bbb")
    text = layer_table([row(name, 10, 10, {"before": 32, "after": 32}, {"before": 0, "after": 0}, 40)])
    assert "\x1b" not in text and len(text.splitlines()[1]) == len(text.splitlines()[0])


def test_a_larger_output_is_never_shown_as_one_x():
    assert ratio_text(1000, 1030) == "0.97x, LARGER than the input"
    assert ratio_text(1030, 1000) == "1.0x" and ratio_text(4000, 100) == "40.0x"
    ladder = ladder_table([{"rung": "dense", "bytes": 1000, "ratio": 1.0, "top1": None},
                           {"rung": "archive", "bytes": 1030, "ratio": 1000 / 1030, "top1": None}])
    assert ladder.splitlines()[-1] == "archive                     1,030    0.97x        -  LARGER than the input"
    rep = flag_growth(flag_growth({"original_bytes": 1000, "compressed_bytes": 1030}))
    assert len(rep["warnings"]) == 1 and "larger than the input" in rep["warnings"][0]
    assert flag_growth({"original_bytes": 1000, "compressed_bytes": 10})["warnings"] == []


@pytest.mark.parametrize("t, nbytes", [
    (torch.zeros(3, dtype=torch.int64), 24), (torch.zeros(3, dtype=torch.float16), 6),
    (torch.zeros(3, dtype=torch.bfloat16), 6), (torch.zeros(3, dtype=torch.bool), 3),
    (torch.zeros((), dtype=torch.float64), 8), (np.zeros((2, 2), np.int32), 16),
])
def test_tensor_bytes_count_each_dtype(t, nbytes):
    assert tensor_bytes(t) == nbytes


def test_state_bytes_and_archive_dtype_names():
    assert state_bytes({"w": torch.zeros(2, 2), "n": torch.tensor(1)}) == 16 + 8
    assert [dtype_bytes(n) for n in ("float32", "int64", "bfloat16", "bool")] == [4, 8, 2, 1]
