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
                  seed: int = 0,
                  out: Path = typer.Option(Path("out/signature"), "--out", "-o")) -> None:
    """Is a selective SSM's state a linear image of its input path's signature? Held-out R^2 by depth,
    with shuffled-path and random-feature controls: signature.json, report.md, signature.png."""
    from ..outputs import check_output
    from ..signature.lens import SignatureConfig, run_lens, run_on_checkpoint
    from ..signature.report import write_outputs

    check_output(out, "signature")
    cfg = SignatureConfig(depth=depth, paths=paths, length=length, channels=channels or (3 if checkpoint else 2),
                          layer=layer, seed=seed)
    if checkpoint:
        if text is not None and not text.is_file():
            raise FileNotFoundError(f"text file {text} does not exist")
        result = run_on_checkpoint(checkpoint, cfg, text=text.read_text() if text else None)
    else:
        result = run_lens(cfg)
    write_outputs(result, out)
    for name in result.subjects:
        last = [r for r in result.rows if r["subject"] == name][-1]
        typer.echo(f"{name:45s} depth {last['depth']}: R^2 {last['r2']:.4f}  shuffled {last['r2_shuffled']:.4f}  "
                   f"random features {last['r2_random_features']:.4f}")
    typer.echo(f"wrote {out / 'signature.json'}, {out / 'report.md'} and {out / 'signature.png'}")
