"""The header phase's two costs, side by side on one mailbox: fetching the header fields
(raw imaplib `1:*`, imapclient's `fetch`, relance's `Mailbox.fetch_headers`) and reading
them (`parse_headers`, per message).

    python -m bench.header_fetch --size 100k --runs 3
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import median, parse_sizes, save_results, size_label
from bench.sync import FOLDERS, imapclient_header_fetch, raw_header_fetch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100k")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from bench.mailbox_gen import install, warm
    from relance.config import ServerConfig
    from relance.mailbox.imap import Mailbox
    from relance.mailbox.parse import parse_headers
    from tests.mailservers import Dovecot

    size = parse_sizes([args.size])[0]
    times: dict[str, list[float]] = {"raw": [], "imapclient": [], "relance": [], "parse": []}
    with Dovecot() as dovecot:
        user, _corpus = install(dovecot, size)
        warm(dovecot, user)
        server = ServerConfig(host=dovecot.host, port=dovecot.imap_port, security="none",
                              username=user.address, password=user.password, timeout=60)
        for _ in range(args.runs):
            started = time.perf_counter()
            raw_header_fetch(dovecot.host, dovecot.imap_port, user.address, user.password)
            times["raw"].append(time.perf_counter() - started)
            started = time.perf_counter()
            imapclient_header_fetch(dovecot.host, dovecot.imap_port, user.address,
                                    user.password)
            times["imapclient"].append(time.perf_counter() - started)
            started = time.perf_counter()
            blocks: list[bytes] = []
            with Mailbox(server) as mailbox:
                for folder in FOLDERS:
                    mailbox.select(folder, readonly=True)
                    blocks += [f.header_bytes for f in mailbox.fetch_headers(
                        mailbox.uids_after(0))]
            times["relance"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for block in blocks:
                parse_headers(block)
            times["parse"].append(time.perf_counter() - started)
    medians = {name: median(values) for name, values in times.items()}
    print(f"{size_label(size)}: raw {medians['raw']:.2f} s, imapclient "
          f"{medians['imapclient']:.2f} s, relance fetch_headers {medians['relance']:.2f} s, "
          f"parse_headers {medians['parse']:.2f} s "
          f"({1e6 * medians['parse'] / len(blocks):.1f} µs per message)")
    save_results("header_fetch", "python -m bench.header_fetch " + " ".join(sys.argv[1:]),
                 {"size": size, "messages": len(blocks), "runs": args.runs,
                  "seconds": times, "median_s": medians,
                  "parse_us_per_message": 1e6 * medians["parse"] / len(blocks)})


if __name__ == "__main__":
    main()
