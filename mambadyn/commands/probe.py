"""``mambadyn probe PATH``: per layer, the spectrum, the (conjectural) scenario, what the tokens do."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def probe_cmd(path: str = typer.Argument(..., help="checkpoint folder, mambadyn run folder, or hub id (online)"),
              text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text to run (default: a short "
                                                  "sample shipped with mambadyn)"),
              ids: Optional[Path] = typer.Option(None, "--ids", help="file of token ids (spaces or commas)"),
              tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="tokenizer.json to encode --text"),
              tokens: int = typer.Option(2048, "--tokens", min=2, help="use at most this many tokens"),
              ode_positions: int = typer.Option(16, "--ode-positions", min=0,
                                                help="positions seeding each layer's ODE (0: skip the ODE)"),
              ode_t_end: Optional[float] = typer.Option(None, "--ode-t-end", help="horizon of each layer's ODE "
                                                        "in layer steps (default: the layers that remain)"),
              ode_layers: str = typer.Option("", "--ode-layers", help="layers whose ODE runs: 'all', or e.g. "
                                             "0,8,16 (default: up to 8, evenly spaced)"),
              attention: str = typer.Option("", "--attention", help="SSM layers whose hidden attention the report "
                                            "shows, e.g. 0,12,23 or layers=0,12,23 (default: none)"),
              windows: int = typer.Option(1, "--windows", min=1, help="probe this many disjoint windows of the "
                                          "text and give every per-layer statistic a 95%% interval over them"),
              window_len: int = typer.Option(512, "--window-len", min=2, help="tokens per window (with --windows)"),
              window_batch: int = typer.Option(8, "--window-batch", min=1, help="windows per forward and backward "
                                               "pass (with --windows; fewer use less memory)"),
              offload_activations: bool = typer.Option(False, "--offload-activations", help="keep what the backward "
                                                       "pass needs in CPU memory (a large model on a GPU)"),
              recompute_layers: bool = typer.Option(False, "--recompute-layers", help="keep only each layer's input "
                                                    "for the backward pass and run the layer again there (less "
                                                    "memory for one more forward pass)"),
              out: Path = typer.Option(Path("out/probe"), "--out", "-o", help="folder for probe.json, report.md, PNGs"),
              ) -> None:
    """Probe a selective-SSM checkpoint layer by layer (Mamba, Mamba-2, FalconMamba, Jamba and the hybrids in
    transformers' format; mamba-ssm folder, hub id, mambadyn run): the spectrum of the layer's interaction
    matrix, the scenario, token norms, gradient shares, the layer's own ODE (Mamba-1) and, with --attention,
    which earlier tokens chosen layers read."""
    from ..nn.load import read_ids, read_text
    from ..outputs import check_output
    from ..probe import ProbeConfig, load_checkpoint, probe, write_outputs

    if text is not None and ids is not None:
        raise typer.BadParameter("give --text or --ids, not both")
    check_output(out, "probe")
    layers = None
    if ode_layers and ode_layers != "all":
        try:
            layers = [int(x) for x in ode_layers.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter(f"--ode-layers takes 'all' or comma-separated layers, got {ode_layers!r}") from None
    att = attention.removeprefix("layers=")
    try:
        att_layers = [int(x) for x in att.split(",") if x.strip()] or None
    except ValueError:
        raise typer.BadParameter(f"--attention takes comma-separated SSM layers, got {attention!r}") from None
    cfg = ProbeConfig(max_tokens=tokens, ode_positions=ode_positions, ode_t_end=ode_t_end,
                      ode_layers=layers, all_ode_layers=ode_layers == "all", attention_layers=att_layers,
                      offload_activations=offload_activations, recompute_layers=recompute_layers)
    loaded = load_checkpoint(path)
    if loaded.kind != "lm" and (text is not None or ids is not None):
        raise typer.BadParameter("a MambaClassifier reads images: the CLI probes its parameters only")
    id_tensor = read_ids(ids, None) if ids is not None else None
    body = read_text(text) if text is not None else None
    if windows > 1:
        from ..probe import probe_windows

        result = probe_windows(loaded, id_tensor, cfg, text=body, tokenizer=tokenizer, windows=windows,
                               window_len=window_len, batch=window_batch)
    else:
        result = probe(loaded, id_tensor, cfg, text=body, tokenizer=tokenizer)
    write_outputs(result, out)
    for lp in result.layers:
        line = (f"{lp.name:28s} +{lp.positive:<3d} -{lp.negative:<3d} complex pairs {lp.complex_pairs:<3d} "
                f"conjecture: {lp.scenario}")
        if lp.delta is not None:
            line += f"; Δ median {lp.delta.quantiles['q50']:.3g}"
        if lp.depth_note:
            line += f"; {lp.depth_note}"
        typer.echo(line)
    typer.echo(f"wrote {out}/probe.json, report.md and figures")
