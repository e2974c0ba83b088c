"""``python -m pqlsdk``: the command line."""

from .cli import main

main(prog_name="pqlsdk")
