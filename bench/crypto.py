"""Per-message cost in process, outgoing (wrap, sign, encrypt) and incoming (decrypt, verify, unwrap), beside
`openssl cms` doing the same crypto on the same message, as a ratio. Run: .venv/bin/python bench/crypto.py

The openssl figure is two `openssl cms` processes in a pipe (sign | encrypt, decrypt | verify), process start
included, as an operator would run it; the ratio is ours / openssl (below 1: faster than openssl).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import ALICE, BOB, KIB, MIB, machine, message, size_name, timed, world

from directmilter.agent import Agent, MessageEnvelope
from directmilter.config import load_config
from directmilter.log import configure

SIZES = [(10 * KIB, 30), (100 * KIB, 20), (1 * MIB, 8), (10 * MIB, 3)]


def main() -> int:
    configure("error")
    w = world()
    agent_a = Agent(load_config(w.write_config("bench-a", w.hisp_a_body())))
    agent_b = Agent(load_config(w.write_config("bench-b", w.hisp_b_body())))
    folder = Path(w.directory)
    print(f"# bench/crypto.py on {machine()}")
    print(f"{'size':>8} {'out ms':>9} {'openssl':>9} {'ratio':>6} {'in ms':>9} {'openssl':>9} {'ratio':>6}")
    worst = 0.0
    for size, repeat in SIZES:
        plain = message(size)
        envelope = MessageEnvelope(ALICE, (BOB,), plain)
        secured = agent_a.outgoing(envelope).message
        out_ours = timed(lambda: agent_a.outgoing(envelope), repeat)  # noqa: B023
        in_ours = timed(lambda: agent_b.incoming(MessageEnvelope(ALICE, (BOB,), secured)), repeat)  # noqa: B023
        source = folder / f"plain-{size}.eml"
        source.write_bytes(plain)
        wire = folder / f"wire-{size}.eml"
        sign_encrypt = (f"openssl cms -sign -binary -md sha256 -signer {w.alice.cert_path} -inkey {w.alice.key_path}"
                        f" -in {source} | openssl cms -encrypt -binary -aes256 -out {wire} {w.bob.cert_path}")
        decrypt_verify = (f"openssl cms -decrypt -binary -recip {w.bob.cert_path} -inkey {w.bob.key_path} -in {wire} | "
                          f"openssl cms -verify -binary -purpose any -CAfile {w.r1.cert_path} -out /dev/null")
        out_ssl = timed(lambda: subprocess.run(sign_encrypt, shell=True, check=True), repeat)  # noqa: B023
        in_ssl = timed(lambda: subprocess.run(decrypt_verify, shell=True, check=True,  # noqa: B023
                                              stderr=subprocess.DEVNULL), repeat)
        print(f"{size_name(size):>8} {out_ours * 1000:9.1f} {out_ssl * 1000:9.1f} {out_ours / out_ssl:6.2f} "
              f"{in_ours * 1000:9.1f} {in_ssl * 1000:9.1f} {in_ours / in_ssl:6.2f}")
        if size >= 10 * MIB:
            worst = max(out_ours / out_ssl, in_ours / in_ssl)
    agent_a.close()
    agent_b.close()
    print(f"target: 10 MiB costs at most 2x openssl cms -> {'met' if worst <= 2 else 'NOT met'} ({worst:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
