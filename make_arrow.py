"""Convert a raw dataset into the Arrow files the datasets read.

    python make_arrow.py --dataset food101 --root R [--out DIR] [--skip-bad]

--root is the parent folder holding mmimdb/, Food101/ or Hatememes/; --out defaults to the official folder
(./datasets/mmimdb, ./datasets/Food101, ./datasets/Hatefull_Memes).
"""

import argparse

from mdpl.data.writers import WRITERS, convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(WRITERS))
    parser.add_argument("--root", required=True, help="parent folder of the raw dataset folder")
    parser.add_argument("--out", default=None, help="output folder (default: the official one)")
    parser.add_argument("--skip-bad", action="store_true", help="skip undecodable images, listing their ids")
    args = parser.parse_args()
    try:
        convert(WRITERS[args.dataset], args.root, args.out, skip_bad=args.skip_bad)
    except (OSError, KeyError, ValueError) as e:  # data problems: the message names the file
        message = str(e.args[0] if isinstance(e, KeyError) else e)
        parser.exit(1, f"make_arrow: {' '.join(message.splitlines())}\n")  # one line


if __name__ == "__main__":
    main()
