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
The work is in gpt2_scratch/publish/export.py and gpt2_scratch/publish/hub_upload.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2_scratch.options import ArgumentParser
from gpt2_scratch.publish.export import WEIGHTS_DTYPES
from gpt2_scratch.publish.gguf import GGUF_TYPES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="publish.py", description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="the finished run folder to publish, e.g. runs/<name>")
    p.add_argument("--repo", required=True, help="Hub model repo to publish to, <user>/<name> (created if missing)")
    p.add_argument("--space", help="also push the demo to this Gradio Space, <user>/<space> (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo (and the Space) private")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build the export in a temporary folder and print what would go where; write and upload nothing",
    )
    p.add_argument("--export-dir", type=Path, help="where to write the export (default: <run>/export)")
    p.add_argument("--license", default="mit", help="license in the model card (default: mit, GPT-2's license)")
    p.add_argument(
        "--weights-dtype",
        choices=WEIGHTS_DTYPES,
        default=WEIGHTS_DTYPES[0],
        help="how model.safetensors is stored: bfloat16 halves what users and the Space download",
    )
    p.add_argument(
        "--gguf",
        action="append",
        choices=tuple(GGUF_TYPES),
        metavar="TYPE",
        help=f"also write model-TYPE.gguf for llama.cpp and Ollama, with an Ollama Modelfile for the first; "
        f"repeat for more types ({', '.join(GGUF_TYPES)}; a LoRA run: its merged weights)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        token = None if args.dry_run else resolve_token()  # before the export: no token, nothing done
        plan = prepare_publish(
            args.run,
            args.repo,
            space_id=args.space,
            private=args.private,
            export_dir=args.export_dir,
            license=args.license,
            weights_dtype=args.weights_dtype,
            gguf_types=args.gguf or (),
            dry_run=args.dry_run,
        )
        if args.dry_run:
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
