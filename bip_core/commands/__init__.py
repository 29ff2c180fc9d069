"""CLI subcommands, one module each (see bip_core/cli.py)."""
