"""``mambadyn signature``: the signature lens on the random exact cases or on a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer


def signature_cmd(checkpoint: str = typer.Option(None, "--checkpoint", help="a Mamba LM folder (HF, mamba-ssm, "
                                                 "mambadyn run) or hub id; default: the random exact cases"),
                  depth: int = typer.Option(5, "--depth", min=1, max=6, help="deepest signature truncation"),
                  layer: int = typer.Option(0, "--layer", min=0, help="the checkpoint's layer"),
                  channels: int = typer.Option(None, "--channels", min=1,
                                               help="input channels (PCA of a checkpoint's inputs); default 2, or 3 "
                                                    "for a checkpoint"),
                  paths: int = typer.Option(3000, "--paths", min=50, help="paths (windows) per subject"),
                  length: int = typer.Option(24, "--length", min=2, help="samples (tokens) per path"),
                  text: Path = typer.Option(None, "--text", help="UTF-8 text for a checkpoint (default: the "
                                            "probe's sample)"),
                  ids: Path = typer.Option(None, "--ids", help="file of token ids (spaces or commas), for a checkpoint "
                                           "without tokenizer.json"),
                  max_memory_gb: float = typer.Option(4.0, "--max-memory-gb", help="refuse a run whose features "
                                                      "would take more memory than this"),
                  seed: int = 0,
                  out: Path = typer.Option(Path("out/signature"), "--out", "-o")) -> None:
    """Is a selective SSM's state a linear image of its input path's signature? Held-out R^2 by depth,
    with shuffled-path and random-feature controls and a linear baseline: signature.json, report.md, signature.png."""
    from ..outputs import check_output
    from ..signature.lens import SignatureConfig, run_lens, run_on_checkpoint
    from ..signature.report import write_outputs

    check_output(out, "signature")
    cfg = SignatureConfig(depth=depth, paths=paths, length=length, channels=channels or (3 if checkpoint else 2),
                          layer=layer, seed=seed, max_memory_gb=max_memory_gb)
    if checkpoint:
        if text is not None and ids is not None:
            raise typer.BadParameter("give --text or --ids, not both")
        from ..nn.load import read_ids, read_text

        token_ids = None if ids is None else read_ids(ids, None)
        result = run_on_checkpoint(checkpoint, cfg, text=read_text(text) if text else None, ids=token_ids)
    elif text is not None or ids is not None:
        raise typer.BadParameter("--text and --ids go with --checkpoint")
    else:
        result = run_lens(cfg)
    write_outputs(result, out)
    for name in result.subjects:
        last = [r for r in result.rows if r["subject"] == name][-1]
        typer.echo(f"{name:45s} depth {last['depth']}: R^2 {last['r2']:.4f}  shuffled {last['r2_shuffled']:.4f}  "
                   f"random features {last['r2_random_features']:.4f}  linear {last['r2_linear_path']:.4f}")
    for line in result.skipped:
        typer.echo(f"not fitted: {line}")
    typer.echo(f"wrote {out / 'signature.json'}, {out / 'report.md'} and {out / 'signature.png'}")
