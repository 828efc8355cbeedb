"""A second milter after directmilter that refuses at end of message while a flag file exists (a later milter's
verdict, or any failure of Postfix's after directmilter's accept). Run: python rejectmilter.py PORT FLAG_FILE."""

from __future__ import annotations

import os
import sys

import Milter


class Rejecter(Milter.Base):  # type: ignore[misc]
    flag = ""

    def eom(self) -> int:
        if os.path.exists(self.flag):
            self.setreply("451", "4.7.1", "refused by the milter after directmilter")
            return int(Milter.TEMPFAIL)
        return int(Milter.ACCEPT)


def main() -> None:
    port, Rejecter.flag = sys.argv[1], sys.argv[2]
    Milter.factory = Rejecter
    Milter.runmilter("rejecter", f"inet:{port}@127.0.0.1", 30)


if __name__ == "__main__":
    main()
