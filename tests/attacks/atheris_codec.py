"""Coverage-guided fuzzing of the request codec with atheris (libFuzzer), run as its own
process by test_fuzz_codec.py: any exception but a 4xx (or 501, 505) refusal is a crash.

python tests/attacks/atheris_codec.py -runs=50000 -max_total_time=20
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from usher.errors import ClientError
    from usher.http.codec import HeadLimits, RequestReader

LIMITS = HeadLimits(max_header_size=4096, max_request_line=1024, max_headers=20, max_body_size=4096)
SEED = (
    b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cut = data[0] % len(data)
    reader = RequestReader(LIMITS)
    try:
        reader.feed(data[1 : cut + 1])
        reader.feed(data[cut + 1 :])
    except ClientError as exc:
        if not (400 <= exc.status < 500 or exc.status in (501, 505)):
            raise


if __name__ == "__main__":
    test_one_input(b"\x10" + SEED)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
