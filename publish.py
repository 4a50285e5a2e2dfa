"""Publish a finished run on the Hugging Face Hub, and optionally its demo as a Space.

    python publish.py --run runs/<name> --repo <user>/<name> [--space <user>/<space>] [--private] [--dry-run]
                      [--gguf q8_0 [--gguf f16 ...]]

Writes the run's export to <run>/export (the layout transformers reads: pipeline("text-generation",
model="<user>/<name>") loads it; the run's own files; a model card) and uploads it as one commit to
the model repo. With --space it also pushes the app to a Gradio Space and sets GPT2_SCRATCH_HUB_REPO
there, so the Space shows this run. --dry-run builds the export in a temporary folder, prints what would go
where, and writes and uploads nothing. An --export-dir that is not empty and not an earlier export is refused.
--gguf adds model-<TYPE>.gguf files for llama.cpp and Ollama, and an Ollama Modelfile. The token comes from
HF_TOKEN or the cached login (hf auth login).
The options are gpt2_scratch.publish.config.PublishConfig's fields; the work is in
gpt2_scratch/publish/export.py and gpt2_scratch/publish/hub_upload.py.
"""

from __future__ import annotations

import argparse
import sys

from gpt2_scratch.options import ArgumentParser, add_dataclass_options
from gpt2_scratch.publish.config import PublishConfig


def build_parser() -> argparse.ArgumentParser:
    """One option per PublishConfig field (help, group, choices and default from the field)."""
    parser = ArgumentParser(prog="publish.py", description=__doc__)
    add_dataclass_options(parser, PublishConfig)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    config = PublishConfig(**vars(parse_args(argv)))
    from huggingface_hub import constants

    from gpt2_scratch.publish.hub_upload import (
        PublishError,
        describe,
        notes,
        prepare_publish,
        resolve_token,
        token_source,
        upload,
    )

    try:
        token = None if config.dry_run else resolve_token()  # before the export: no token, nothing done
        plan = prepare_publish(
            config.run,
            config.repo,
            space_id=config.space,
            private=config.private,
            export_dir=config.export_dir,
            license=config.license,
            weights_dtype=config.weights_dtype,
            gguf_types=config.gguf,
            dry_run=config.dry_run,
        )
        if config.dry_run:
            try:
                print(describe(plan, endpoint=constants.ENDPOINT, token_from=token_source()))
            finally:
                plan.discard()
            print("dry run: nothing was written or uploaded")
            return 0
        result = upload(plan, token=token)
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"published {plan.model.repo_id}: {result.model_url} (commit {result.model_commit[:10]})")
    if result.space_url:
        print(f"Space: {result.space_url} (commit {result.space_commit[:10]}), shows {plan.model.repo_id}")
    for line in notes(plan):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
