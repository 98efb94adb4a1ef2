"""The ``meranet-fast`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and ``main(args)``;
modules are imported only when their subcommand runs, so ``meranet-fast flops`` never imports the
trainer and ``meranet-fast --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "flops": ("meranet_fast.analysis.cli", "parameter and FLOP report: 3D ResNet vs MERANet (fvcore)"),
    "bench": ("meranet_fast.benchmark.cli", "benchmarks: fused ops vs eager and torch.compile, or whole models"),
    "train": ("meranet_fast.train.cli_train",
              "train MERANet / 3D ResNet (paper recipe; --preset demo for a quick run)"),
    "eval": ("meranet_fast.train.cli_eval",
             "evaluate a checkpoint on its test/validation split (metrics, confusion matrix)"),
    "predict": ("meranet_fast.explain.cli_predict", "class probabilities for a folder of frames or a video"),
    "saliency": ("meranet_fast.explain.cli_saliency", "Grad-CAM and spatio-temporal attention maps of a clip, as PNG"),
    "synth": ("meranet_fast.data.cli_synth", "write the synthetic micro-expression set as a CASME II-style folder"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="meranet-fast",
        description="Fused attention kernels and a fast MERANet for micro-expression recognition.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            p.description = (module.__doc__ or help_text).strip()
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
