"""The `nanochat` command line. Each subcommand group lives next to the code it drives."""
import argparse
import sys


def main(argv=None):
    from nanochat_core.common import offline_env
    offline_env()
    parser = argparse.ArgumentParser(prog="nanochat", description="nanochat-rag: hybrid Transformer/Mamba chat model with RAG and REFRAG")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each group registers its own subparsers; imports stay lazy so `nanochat --help` is fast.
    from nanochat_core.retrieval import cli as retrieval_cli
    retrieval_cli.register(sub)
    __import__("nanochat_core.presets", fromlist=["register"]).register(sub)  # `nanochat preset`
    from nanochat_core import chat_cli
    chat_cli.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        # User errors: print the message (which says what to do), not a traceback.
        print(f"nanochat: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
