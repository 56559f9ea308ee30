"""`python -m train`: hands over to the library's Hydra entry point."""

from domain_embed.cli import main

if __name__ == "__main__":
    main()
