"""``--device`` on every command that takes it: without a GPU, ``--device cuda`` is one
clear line and exit 2, before any file is read or written. The commands are found in
the parser, so a new command with --device is covered without editing this test."""

from __future__ import annotations

import argparse

import pytest
import torch

from nnshrink.cli import build_parser, main


def _commands_with_device() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items()
            if any("--device" in a.option_strings for a in p._actions)}


def _minimal_argv(name: str, p: argparse.ArgumentParser) -> list[str]:
    """``name`` with a placeholder for every required argument (none of them is read:
    the device is checked first)."""
    argv = [name]
    for a in p._actions:
        if not a.option_strings and a.nargs not in ("?", "*", argparse.REMAINDER):
            argv.append("placeholder")
        elif a.option_strings and a.required:
            argv += [a.option_strings[0], "placeholder"]
    return argv


COMMANDS = _commands_with_device()


def test_the_commands_with_device_are_found():
    assert {"train", "compress", "eval", "demo", "factorize", "sensitivity"} <= set(COMMANDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_gpu_is_one_clear_line(command, device, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main([*_minimal_argv(command, COMMANDS[command]), "--device", device])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (f"nnshrink {command}: error: device {device!r} asked for, but no CUDA device is "
                   "available here\n")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_device_is_one_clear_line(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*_minimal_argv(command, COMMANDS[command]), "--device", "gpu0"]) == 2
    err = capsys.readouterr().err
    assert err == f"nnshrink {command}: error: unknown device 'gpu0'; use cpu or cuda[:N]\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_the_example_refuses_a_missing_gpu_before_any_work(tmp_path):
    from examples import resnet_bn
    from nnshrink.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resnet_bn.main(["--device", "cuda", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
