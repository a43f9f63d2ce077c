"""``python -m aioqueue`` is the ``aioqueue`` command."""

from .cli import main

main()
