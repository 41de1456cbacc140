"""CLI subcommands, one module each; ``mambadyn.cli`` mounts them."""
