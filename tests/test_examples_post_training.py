"""``python -m examples.post_training``: an example model compressed with calibration batches only."""

import torch

import nnshrink


def test_post_training_example_round_trip(tiny_idx_dir, tmp_path):
    from examples import post_training, resnet_bn

    res = post_training.main(["resnet_bn", "--subset", "200", "--epochs", "1", "--data-dir", str(tiny_idx_dir),
                              "--out", str(tmp_path), "--bits", "3", "--outliers", "0.01", "--calibration", "64"])
    archive = tmp_path / "resnet_bn-post-training.nsk"
    assert archive.stat().st_size == res["archive_bytes"] and res["ratio"] > 5
    assert res["setting"] == "3 bits" and res["calibration_images"] == 64 and not res["warnings"]
    x = torch.rand(8, 1, 28, 28)
    fresh = nnshrink.load(archive, model=resnet_bn.build()).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), res["model"].eval()(x), rtol=0, atol=0)
