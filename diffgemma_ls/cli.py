"""Command line: ``diffgemma-ls [--stdio|--tcp]`` serves LSP; ``infill``, ``fill``, ``info``, ``bench``
are tools.

Exit codes (other tools depend on them): 0 success (an empty completion or fill included), 1 the model
cannot load, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from diffgemma_ls import __version__
from diffgemma_ls.bench.cli import add_bench_arguments, run_bench
from diffgemma_ls.config import (
    MAX_CANDIDATES,
    MODEL_FLAGS,
    SERVER_FLAGS,
    Settings,
    add_flags,
    settings_from_cli,
)
from diffgemma_ls.exit_codes import EXIT_MODEL, EXIT_OK, EXIT_USAGE
from diffgemma_ls.fill import fill_target, trim_selection
from diffgemma_ls.languages import language_for

if TYPE_CHECKING:
    from diffgemma_ls.completion import Outcome


def _model_flags(skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Flags every command takes (``skip``: those a command defines its own way)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("model")
    add_flags(group, tuple(name for name in MODEL_FLAGS if name not in skip))
    group.add_argument("--log-file", help="write the log here instead of stderr")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    return common


def _decode_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--decode", choices=("adaptive", "fixed", "sequential"), default="adaptive", help="decoding mode"
    )
    parser.add_argument("--steps", type=int, help="cap on forward passes per canvas (exact for fixed)")
    parser.add_argument("--entropy-bound", type=float, help="entropy bound for adaptive acceptance")


def build_parser() -> argparse.ArgumentParser:
    common = _model_flags()
    parser = argparse.ArgumentParser(
        prog="diffgemma-ls",
        description="Inline code completion and infilling from a local DiffusionGemma model (LSP server).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"diffgemma-ls {__version__}")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="serve LSP over stdin/stdout (default)")
    transport.add_argument("--tcp", metavar="[HOST:]PORT", help="serve LSP over TCP (host: 127.0.0.1)")
    add_flags(parser.add_argument_group("server"), SERVER_FLAGS)
    sub = parser.add_subparsers(dest="command")

    infill = sub.add_parser(
        "infill", parents=[common], help="complete at a position in a file, or JSONL tasks"
    )
    infill.add_argument("file", nargs="?", type=Path, help="source file")
    infill.add_argument("--line", type=int, help="1-based line")
    infill.add_argument("--col", type=int, help="1-based column, in characters")
    infill.add_argument("--jsonl", action="store_true", help="read tasks from stdin, one JSON object a line")
    infill.add_argument("--mode", choices=("auto", "line", "block"), default="auto", help="completion size")
    infill.add_argument("--language", help="language id (default: from the file extension)")
    _workspace_flag(infill)
    infill.add_argument(
        "--candidates",
        type=int,
        default=1,
        choices=range(1, MAX_CANDIDATES + 1),
        metavar="N",
        help=f"alternatives from one batched run (1-{MAX_CANDIDATES}); FILE mode prints them as a JSON list",
    )
    _decode_flags(infill)

    fill = sub.add_parser(
        "fill", parents=[common], help="regenerate a region of a file, as the editors' Fill does; prints it"
    )
    fill.add_argument("file", type=Path, help="source file")
    fill.add_argument("--lines", metavar="A-B", help="1-based lines to regenerate (a whole-line selection)")
    fill.add_argument("--line", type=int, help="1-based line of an empty body or TODO line to fill")
    fill.add_argument("--col", type=int, default=1, help="1-based column with --line (default: 1)")
    fill.add_argument("--language", help="language id (default: from the file extension)")
    _workspace_flag(fill)
    fill.add_argument(
        "--candidates",
        type=int,
        default=Settings().candidates,
        choices=range(1, MAX_CANDIDATES + 1),
        metavar="N",
        help="candidates from one batched run; the first that parses is printed (default: %(default)s)",
    )
    _decode_flags(fill)

    info = sub.add_parser("info", parents=[common], help="what would be served: model, device, quantization")
    info.add_argument("--json", action="store_true", help="one JSON object")
    _workspace_flag(info)

    # the shipped model only: its tuned weights are what the server swaps in for a workspace
    not_for_tune = ("model", "quantize", "device", "prompt_format", "tuned_weights",
                    "backend", "backend_model", "backend_api_key_env")  # fmt: skip
    tune = sub.add_parser(
        "tune",
        parents=[_model_flags(skip=not_for_tune)],
        help="adapt the shipped model to a repository's own code (CPU, minutes); the server then uses it",
    )
    tune.add_argument("workspace", nargs="?", type=Path, default=Path("."), help="repository (default: .)")
    tune.add_argument("--minutes", type=float, default=10.0, help="training time (default: %(default)s)")
    tune.add_argument("--fresh", action="store_true", help="start again from the shipped weights")
    tune.add_argument("--forget", action="store_true", help="delete this workspace's tuned weights and stop")

    bench = sub.add_parser(
        "bench",
        parents=[_model_flags(skip=("quantize",))],
        help="quality and speed on infilling tasks, in one run",
    )
    add_bench_arguments(bench)
    for command in (infill, fill, info, bench, tune):  # a usage error shows the subcommand's own usage
        command.set_defaults(usage=command)
    return parser


def _workspace_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        type=Path,
        help="the repository: its other files as context and its tuned weights, as the server has them",
    )


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command is None:
        level = min(level, logging.INFO)  # the server log is for reading when something is wrong
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    logging.basicConfig(
        level=level, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.verbose < 2:
        for noisy in ("transformers", "pygls", "urllib3", "filelock", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # its optional hub kernels are never fetched here; the warning that says so is noise
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not sys.stderr.isatty():  # a bar is for a person watching, not for a log or a pipe
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_cli(args)


def parse_tcp(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tcp takes [HOST:]PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(args: argparse.Namespace) -> int:
    from diffgemma_ls.server import create_server

    server = create_server(settings_from_cli(args))
    if args.tcp:
        try:
            host, port = parse_tcp(args.tcp)
        except ValueError as exc:
            print(f"diffgemma-ls: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if host not in ("127.0.0.1", "localhost", "::1"):
            logging.getLogger(__name__).warning(
                "listening on %s: anyone who can reach this address can read what you send the server", host
            )
        server.start_tcp(host, port)
    else:
        server.start_io()
    return EXIT_OK


def _load_engine(args: argparse.Namespace):
    """The engine for a one-shot command, or None after printing why the model cannot load.

    With ``--workspace``, the weights tuned for it, as the server would serve its files.
    """
    from diffgemma_ls.completion import load_engine
    from diffgemma_ls.engine.kinds import ModelLoadError

    workspaces = [args.workspace] if getattr(args, "workspace", None) is not None else []
    try:
        engine = load_engine(_settings(args), workspaces)
        if _settings(args).backend:
            engine.check()  # a one-shot command with a dead backend fails now, saying why
        return engine
    except ModelLoadError as exc:
        print(f"diffgemma-ls: {exc}", file=sys.stderr)
        return None


def _workspace(args: argparse.Namespace):
    """The scanned ``--workspace`` (``None`` without one), or ``EXIT_USAGE`` after saying what is wrong."""
    if args.workspace is None:
        return None
    if not args.workspace.is_dir():
        print(f"diffgemma-ls {args.command}: --workspace {args.workspace} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    from diffgemma_ls.workspace import Workspace

    workspace = Workspace([args.workspace])
    workspace.scan()
    return workspace


def _decode_settings(args: argparse.Namespace) -> dict:
    return {"decode": args.decode, "steps": args.steps, "entropy_bound": args.entropy_bound}


def _texts(outcome: Outcome) -> list[str]:
    """The best completion first, then the distinct alternatives (a copied line that won adds one)."""
    best = [outcome.completion.text] if outcome.completion else []
    return best + [c.text for c in outcome.alternatives]


def infill(args: argparse.Namespace) -> int:
    from diffgemma_ls.completion import complete_text

    if args.jsonl == (args.file is not None):
        print("diffgemma-ls infill: give FILE --line L --col C, or --jsonl", file=sys.stderr)
        return EXIT_USAGE
    if args.file is not None:
        if args.line is None or args.col is None:
            print("diffgemma-ls infill: --line and --col (1-based) are required with FILE", file=sys.stderr)
            return EXIT_USAGE
        if args.line < 1 or args.col < 1:
            print(
                f"diffgemma-ls infill: --line and --col count from 1, got {args.line}:{args.col}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            text = args.file.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            print(f"diffgemma-ls infill: {exc}", file=sys.stderr)
            return EXIT_USAGE
        offset = _offset_of(text, args.line, args.col)
        if offset is None:
            print(
                f"diffgemma-ls infill: line {args.line}, column {args.col} is outside the file",
                file=sys.stderr,
            )
            return EXIT_USAGE
        language = args.language or language_for(str(args.file)) or "python"
    workspace = _workspace(args)
    if workspace == EXIT_USAGE:
        return EXIT_USAGE
    engine = _load_engine(args)
    if engine is None:
        return EXIT_MODEL
    settings = _settings(args)
    if args.file is not None:
        outcome = complete_text(
            engine,
            text[:offset],
            text[offset:],
            language,
            args.mode,
            settings,
            candidates=args.candidates,
            workspace=workspace,
            path=str(args.file),
            **_decode_settings(args),
        )
        if args.candidates > 1:
            print(json.dumps(_texts(outcome)[: args.candidates], indent=1))
        else:
            print(outcome.completion.text if outcome.completion else "", flush=True)
        return EXIT_OK
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(_jsonl_task(engine, line, settings, args, workspace)), flush=True)
    return EXIT_OK


def fill(args: argparse.Namespace) -> int:
    """Print the replacement for a region, or say on stderr why there is none (the file is never written)."""
    from diffgemma_ls.completion import choose_fill_why, plan_fill, run

    try:
        text = args.file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        print(f"diffgemma-ls fill: {exc}", file=sys.stderr)
        return EXIT_USAGE
    language = args.language or language_for(str(args.file)) or "python"
    region = _fill_region(text, args, language)
    if isinstance(region, str):
        print(f"diffgemma-ls fill: {region}", file=sys.stderr)
        return EXIT_USAGE
    workspace = _workspace(args)
    if workspace == EXIT_USAGE:
        return EXIT_USAGE
    engine = _load_engine(args)
    if engine is None:
        return EXIT_MODEL
    start, end = region
    knobs = {"candidates": args.candidates, "workspace": workspace, **_decode_settings(args)}
    request = plan_fill(text, start, end, language, _settings(args), engine, uri=str(args.file), **knobs)
    outcome = run(engine, request)
    chosen, why = choose_fill_why(outcome, text, start, end, language, str(args.file))
    if chosen is None:
        print(
            f"diffgemma-ls fill: nothing to fill here ({args.candidates} candidate(s)): {why}",
            file=sys.stderr,
        )
        return EXIT_OK
    sys.stdout.write(chosen.text + "\n")
    return EXIT_OK


def _fill_region(text: str, args: argparse.Namespace, language: str) -> tuple[int, int] | str:
    """(start, end) offsets to regenerate, or a message saying what is wrong with the flags."""
    if (args.lines is None) == (args.line is None):
        return "give --lines A-B, or --line L [--col C] on an empty body or a TODO line"
    if args.lines is not None:
        first, _, last = args.lines.partition("-")
        if not (first.isdigit() and (last or first).isdigit()) or not 1 <= int(first) <= int(last or first):
            return f"--lines takes A-B with 1 <= A <= B, got {args.lines!r}"
        start, end = _offset_of(text, int(first), 1), _offset_of(text, int(last or first) + 1, 1)
        if start is None:
            return f"line {first} is outside the file"
        return trim_selection(text, start, len(text) if end is None else end)
    offset = _offset_of(text, args.line, args.col) if args.line >= 1 and args.col >= 1 else None
    if offset is None:
        return f"line {args.line}, column {args.col} is outside the file"
    target = fill_target(text, offset, language, str(args.file))
    if target is None:
        return f"no empty body or TODO line at {args.line}:{args.col}; select lines with --lines A-B"
    return target


def _jsonl_task(engine, line: str, settings: Settings, args: argparse.Namespace, workspace=None) -> dict:
    from diffgemma_ls.completion import complete_text

    try:
        task = json.loads(line)
        if not isinstance(task, dict):
            raise ValueError("each line must be a JSON object")
        prefix, suffix = task.get("prefix"), task.get("suffix")
        language, mode = task.get("language", "python"), task.get("mode", "auto")
        path = task.get("path", "")  # the task's file: a chat prompt names it, the workspace skips it
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise ValueError('"prefix" and "suffix" must be strings')
        if (
            not isinstance(language, str)
            or not isinstance(path, str)
            or mode not in ("auto", "line", "block")
        ):
            raise ValueError('"language" must be a string and "mode" one of auto, line, block')
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return {"error": str(exc)}
    started = time.perf_counter()
    knobs = {"candidates": args.candidates, **_decode_settings(args)}
    outcome = complete_text(
        engine, prefix, suffix, language, mode, settings, workspace=workspace, path=path, **knobs
    )
    result = outcome.result
    alternatives = {"alternatives": _texts(outcome)[1 : args.candidates]} if args.candidates > 1 else {}
    return {
        "completion": outcome.completion.text if outcome.completion else "",
        "forward_passes": result.forward_passes if result else 0,
        "tokens_per_forward": round(result.tokens_per_forward, 3)
        if result and result.forward_passes
        else 0.0,
        "ms": round((time.perf_counter() - started) * 1000, 2),
        "prefill_ms": round(result.prefill_ms, 2) if result else 0.0,
        "denoise_ms": round(result.denoise_ms, 2) if result else 0.0,
        **alternatives,
    }


def _offset_of(text: str, line: int, col: int) -> int | None:
    """Offset of a 1-based line and 1-based character column; the column may be one past the end."""
    lines = text.splitlines(keepends=True) or [""]
    if line > len(lines) + (1 if text.endswith(("\n", "\r")) else 0):
        return None
    start = sum(len(x) for x in lines[: line - 1])
    content = lines[line - 1].rstrip("\r\n") if line <= len(lines) else ""
    if col > len(content) + 1:
        return None
    return start + col - 1


def info(args: argparse.Namespace) -> int:
    from diffgemma_ls.engine.quantize import describe_model
    from diffgemma_ls.languages import served_languages

    engine = _load_engine(args)
    if engine is None:
        return EXIT_MODEL
    if _settings(args).backend:
        return _print(args, _backend_info(engine))
    loaded, report = engine.loaded, describe_model(engine.model)
    code_languages = getattr(loaded.model.config, "code_languages", None)
    settings, defaults = _settings(args), engine.defaults
    data = {
        "model": loaded.name,
        "path": loaded.path,
        "tuned_for": str(engine.tuned_for) if engine.tuned_for else None,
        "device": str(loaded.device),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "quantization": loaded.quantization,
        "noise_kind": loaded.model.noise_kind,
        "sampler": "CodeSampler" if loaded.model.noise_kind == "mask" else "EntropyBoundSampler",
        "prompt_format": engine.layout.format,
        "canvas_length": settings.canvas_length or defaults.canvas_length,
        "max_steps": settings.max_steps or defaults.max_steps,
        "typing_max_steps": settings.typing_max_steps or defaults.typing_max_steps,
        "languages": list(served_languages(code_languages)),
        "languages_from": "checkpoint" if code_languages else "installed grammars (a general model)",
        **report.to_dict(),
    }
    return _print(args, data)


def _backend_info(backend) -> dict:
    from diffgemma_ls.languages import served_languages

    return {
        "backend": backend.url,
        "models": backend.check(),
        "model": backend.model_name,
        "prompt_format": backend.layout.format,
        "endpoint": "/v1/chat/completions" if backend.layout.format == "chat" else "/v1/completions",
        "canvas_length": backend.defaults.canvas_length,
        "languages": list(served_languages(None)),
        "api_key_from": backend.api_key_env,
        "encrypted": backend.url.startswith("https://"),
    }


def _print(args: argparse.Namespace, data: dict) -> int:
    if args.json:
        print(json.dumps(data))
    else:
        width = max(len(k) for k in data)
        for key, value in data.items():
            print(f"{key:<{width}}  {value}")
    return EXIT_OK


def tune(args: argparse.Namespace) -> int:
    """Tune the shipped model on a workspace (``diffgemma_ls.tune``); 2 when it cannot run there."""
    import shutil

    from diffgemma_ls.tuned import tune_dir

    if not args.workspace.is_dir():
        print(f"diffgemma-ls tune: {args.workspace} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    folder = tune_dir(args.workspace)
    if args.forget:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"forgot the tuned weights of {args.workspace.resolve()}")
        return EXIT_OK
    if not args.minutes > 0:
        print("diffgemma-ls tune: --minutes must be above 0", file=sys.stderr)
        return EXIT_USAGE
    from diffgemma_ls.engine.kinds import ModelLoadError
    from diffgemma_ls.engine.loader import resolve_model_path
    from diffgemma_ls.tune import TuneError
    from diffgemma_ls.tune import tune as run_tune

    settings = _settings(args)
    try:
        base = Path(resolve_model_path(settings.model, settings.allow_download))
        record = run_tune(args.workspace, base, args.minutes, settings, fresh=args.fresh)
    except ModelLoadError as exc:
        print(f"diffgemma-ls tune: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except TuneError as exc:
        print(f"diffgemma-ls tune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{record.steps} steps, {record.train_seconds / 60:.1f} minutes of training in all; {folder}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level command; name the one that was used
        getattr(args, "usage", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    _setup_logging(args)
    if args.command == "infill":
        return infill(args)
    if args.command == "fill":
        return fill(args)
    if args.command == "info":
        return info(args)
    if args.command == "bench":
        return run_bench(args, _settings(args))
    if args.command == "tune":
        return tune(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
