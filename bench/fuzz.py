"""Fuzz every parser of peer bytes: checking ends in a verdict with a reason, never a crash.

Four targets, each the code a node runs on bytes it did not write:

- ``blob``: an update's safetensors bytes through the contract's layout check and the tensor
  loader (``fl/tensors.py``); expected failure: ``ContractError`` (a ``malformed_blob`` verdict);
- ``tx``: a transaction's bytes (``Transaction.from_canonical``, and ``parse_json`` then
  ``Transaction.from_dict`` and its hash); expected: ``BcflError``;
- ``block``: a block or a consensus message (``Block``/``Proposal``/``Vote.from_dict``, header
  and commit certificate ``from_canonical``, hashes and Merkle root); expected: ``BcflError``;
- ``sig``: the RFC 9421 ``Signature-Input``/``Signature`` and RFC 9530 ``Content-Digest``
  headers of a signed request, and its body (``node/httpsig.verify_request``); expected:
  ``SignatureError``;
- ``body``: a signed route's or a peer-stream frame's JSON body as the node's API reads it
  (``POST /v1/txs``, ``/v1/updates`` with its base64 blob, ``/v1/consensus``, stream update
  frames and their ``seen`` list); expected: ``BcflError`` (the API's ``Refusal`` is one).

Any other exception is *unexpected*: it is counted, its first samples are printed (type,
message, innermost bcfl frame) and the input is written under ``--crashes``; the run goes on.
An input that takes more than ``--slow-s`` of CPU, twice, is counted as well (a parser may not
be a denial of service; CPU time, as wall time on a shared machine is mostly other processes').

Engines: ``atheris`` (coverage-guided libFuzzer over the instrumented bcfl, http_sf and
rfc8785 code; ``pip install atheris``), one process per target, or ``mutate`` (no dependency:
seeded random mutations of valid seeds and hostile tokens, deterministic for a given
``--seed``; what CI runs). ``auto`` takes atheris when it imports.

    python bench/fuzz.py --target all --inputs 1000000           # the long run (hours)
    python bench/fuzz.py --target blob --inputs 20000 --engine mutate

Prints one line a target (inputs, seconds, rate, unexpected, slow) and, with ``--json``, the
figures as JSON; exits 1 when any target had an unexpected exception or a slow input.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = ("blob", "tx", "block", "sig", "body")
#: Inputs that once failed (one folder a target): replayed first by both engines, kept forever.
CORPUS = ROOT / "bench" / "fuzz_corpus"
#: Modules atheris instruments for coverage feedback (the parsers and what they call).
INSTRUMENTED = ["bcfl_cli", "http_sf", "rfc8785"]
#: An input's size bound for libFuzzer; large enough for a seed block with two transactions.
MAX_LEN = 8192
#: Samples of unexpected exceptions kept and printed per target.
SAMPLES = 5
CHAIN = "c" * 64
URL = "http://127.0.0.1:8700/v1/txs"
CREATED = 1_700_000_000


@dataclass
class Figures:
    """What one target's run measured."""

    target: str
    engine: str
    inputs: int = 0
    seconds: float = 0.0
    unexpected: int = 0
    slow: int = 0
    slowest_s: float = 0.0
    samples: list[str] = field(default_factory=list)
    #: libFuzzer's last status (atheris only): coverage edges, features, corpus entries
    coverage: str = ""

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.target:5s} {self.engine:7s} inputs {self.inputs:>9,d}  "
            f"seconds {self.seconds:9.1f}  rate {self.rate:8.0f}/s  "
            f"unexpected {self.unexpected}  slow {self.slow} (slowest {self.slowest_s:.3f} s)"
            + (f"  {self.coverage}" if self.coverage else "")
        )


# --- the targets ------------------------------------------------------------------------------
def _load_targets() -> dict[str, tuple[Callable[[bytes], None], tuple[type[BaseException], ...]]]:
    """name -> (check the input, the exceptions that are verdicts). Imported late: atheris
    instruments what is imported inside its context."""
    from bcfl_cli.consensus.messages import Proposal
    from bcfl_cli.errors import BcflError, ContractError
    from bcfl_cli.fl.tensorfile import TensorFile
    from bcfl_cli.fl.tensors import check_safetensors_layout, decode_tensors
    from bcfl_cli.protocol.block import Block, BlockHeader, CommitCertificate, Vote
    from bcfl_cli.protocol.encoding import parse_json
    from bcfl_cli.protocol.tx import Transaction
    from bcfl_cli.wire.httpsig import RequestView, SignatureError, verify_request

    def blob(data: bytes) -> None:
        check_safetensors_layout(data, max_bytes=1 << 20)
        for _ in TensorFile.of_bytes(data, max_bytes=1 << 20).tensors().values():
            pass  # the contract's streaming reader, a tensor at a time
        decode_tensors(data, max_bytes=1 << 20)

    def tx(data: bytes) -> None:
        with contextlib.suppress(BcflError):
            Transaction.from_canonical(data).signature_valid()
        Transaction.from_dict(parse_json(data)).digest()

    def block(data: bytes) -> None:
        with contextlib.suppress(BcflError):
            BlockHeader.from_canonical(data)
        with contextlib.suppress(BcflError):
            CommitCertificate.from_canonical(data)
        value = parse_json(data)
        with contextlib.suppress(BcflError):
            Vote.from_dict(value).signature_valid()
        with contextlib.suppress(BcflError):
            Proposal.from_dict(value).signature_valid()
        parsed = Block.from_dict(value)
        parsed.computed_tx_root()
        if parsed.commit is not None:
            parsed.commit.precommit_digests(CHAIN)

    def sig(data: bytes) -> None:
        fields = data.split(b"\0", 3) + [b""] * 3
        names = ("signature-input", "signature", "content-digest")
        headers = {n: v.decode("latin-1") for n, v in zip(names, fields[:3], strict=True) if v}
        headers["host"] = "127.0.0.1:8700"
        view = RequestView("POST", "127.0.0.1:8700", "/v1/txs", "", headers)
        verify_request(view, fields[3], now=CREATED)

    import types

    from bcfl_cli.node.app import Api
    from bcfl_cli.node.peers import parse_seen
    from bcfl_cli.wire.schemas import (
        ConsensusMessage,
        StreamUpdate,
        SubmitTx,
        SubmitUpdate,
        validate_body,
    )

    api = types.SimpleNamespace(
        max_inline_blob=1 << 20, chain=types.SimpleNamespace(genesis_hash=CHAIN)
    )

    def body(data: bytes) -> None:
        value = parse_json(data, max_bytes=1 << 20)
        if isinstance(value, dict) and "update" in value:
            frame = validate_body(StreamUpdate, value)
            parse_seen(frame.seen)
            Api._update_and_blob(api, frame.update)  # type: ignore[arg-type]
        elif isinstance(value, dict) and "blob" in value:
            Api._update_and_blob(api, validate_body(SubmitUpdate, value))  # type: ignore[arg-type]
        elif isinstance(value, dict) and ("proposal" in value or "vote" in value):
            validate_body(ConsensusMessage, value)
            Api._consensus_message(api, value)  # type: ignore[arg-type]
        else:
            Transaction.from_dict(validate_body(SubmitTx, value).tx).digest()

    return {
        "body": (body, (BcflError,)),
        "blob": (blob, (ContractError,)),
        "tx": (tx, (BcflError,)),
        "block": (block, (BcflError,)),
        "sig": (sig, (SignatureError,)),
    }


def seeds(target: str) -> list[bytes]:
    """Valid inputs of ``target`` and the inputs that once failed, to start from."""
    return _valid_seeds(target) + [p.read_bytes() for p in sorted((CORPUS / target).glob("*"))]


def _valid_seeds(target: str) -> list[bytes]:
    import nacl.signing
    import torch

    from bcfl_cli.consensus.messages import Proposal
    from bcfl_cli.fl.tensors import encode_tensors
    from bcfl_cli.protocol.block import Block, BlockHeader, CommitCertificate, Vote, VoteType
    from bcfl_cli.protocol.encoding import canonical
    from bcfl_cli.protocol.tx import TxKind, make_tx
    from bcfl_cli.wire.httpsig import sign_request

    key = nacl.signing.SigningKey(bytes(range(32)))
    if target == "blob":
        good = encode_tensors({"w": torch.ones(2, 3), "b": torch.zeros(3)})
        (n,) = struct.unpack("<Q", good[:8])
        return [good, good[: 8 + n], encode_tensors({"x": torch.ones(1, dtype=torch.float64)})]
    update = make_tx(
        key,
        CHAIN,
        TxKind.UPDATE,
        {
            "round": 1,
            "base_model": "b" * 64,
            "blob": "d" * 64,
            "blob_size": 100,
            "num_samples": 10,
            "metrics": {"loss": "0.5"},
        },
        time_ms=CREATED * 1000,
        nonce="0" * 32,
    )
    validation = make_tx(
        key,
        CHAIN,
        TxKind.VALIDATION,
        {"update": update.hash, "verdict": "reject", "reason": "malformed_blob", "detail": "x"},
        time_ms=CREATED * 1000,
        nonce="1" * 32,
    )
    if target == "tx":
        return [canonical(update.to_dict()), canonical(validation.to_dict())]
    proposer = update.author
    header = BlockHeader(1, "a" * 64, CREATED * 1000, proposer, "e" * 64, "f" * 64, CHAIN)
    vote = Vote(CHAIN, 1, 0, VoteType.PRECOMMIT, header.hash, proposer).signed(key)
    commit = CommitCertificate.from_votes([vote])
    block = Block(header, (update, validation), commit)
    proposal = Proposal(CHAIN, 1, 0, Block(header, (update,)), -1, proposer).signed(key)
    if target == "block":
        return [
            canonical(block.to_dict()),
            canonical(header.to_dict()),
            canonical(commit.to_dict()),
            canonical(vote.to_dict()),
            canonical(proposal.to_dict()),
        ]
    if target == "body":
        inline = base64.b64encode(b"\0" * 100).decode()
        return [
            canonical({"tx": update.to_dict()}),
            canonical({"tx": update.to_dict(), "blob": inline}),
            canonical({"update": {"tx": update.to_dict(), "blob": inline}, "seen": "abc,def"}),
            canonical({"vote": vote.to_dict()}),
            canonical({"proposal": proposal.to_dict()}),
        ]
    out = []
    for body in (canonical(update.to_dict()), b"", None):
        signed = sign_request(key, "POST", URL, {}, body, created=CREATED, nonce="n" * 22)
        parts = [signed.get(k, "") for k in ("Signature-Input", "Signature", "Content-Digest")]
        out.append(b"\0".join(p.encode("latin-1") for p in parts) + b"\0" + (body or b""))
    return out


#: Hostile fragments the mutation engine splices in (what a fuzzer would take long to build).
TOKENS = [
    b"[" * 64,
    b"{" * 64,
    b'{"a":' * 40,
    b'"\\u0000"',
    b'"\\ud800"',
    b"1e999",
    b"-0",
    b"NaN",
    b"Infinity",
    b"9" * 30,
    b"-9007199254740993",
    b"true",
    b"null",
    b'"__metadata__":{"a":[[[]]]}',
    b"\xff\xfe",
    b"\\",
    b'"',
    b";created=-1",
    b";keyid=?1",
    b"=:AAAA:",
    b", b=()",
    b'("@method" "@path")',
    b"sha-512=:",
    b"\x00",
]


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = rng.choice(TOKENS) * rng.choice((1, 1, 2, 40))
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif op == 5:
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf[pos:] = other[cut:]
        elif op == 6 and len(buf) >= 8:
            buf[0:8] = struct.pack("<Q", rng.choice((0, 1, len(buf) - 8, len(buf), 2**63)))
    return bytes(buf[: MAX_LEN * 4])


# --- one input --------------------------------------------------------------------------------
class Runner:
    """Runs inputs against one target and keeps the figures."""

    def __init__(self, target: str, engine: str, crashes: Path | None, slow_s: float) -> None:
        self.check, self.expected = _load_targets()[target]
        self.figures = Figures(target, engine)
        self.crashes = crashes
        self.slow_s = slow_s
        self.started = time.perf_counter()

    def one(self, data: bytes) -> None:
        elapsed = self._timed(data, keep_failure=True)
        self.figures.inputs += 1
        if elapsed > self.slow_s:  # CPU time; confirmed by a second run (not a GC pause)
            elapsed = min(elapsed, self._timed(data, keep_failure=False))
        self.figures.slowest_s = max(self.figures.slowest_s, elapsed)
        if elapsed > self.slow_s:
            self.figures.slow += 1
            self._keep(data, "slow")

    def _timed(self, data: bytes, *, keep_failure: bool) -> float:
        """CPU seconds of one check: on a loaded machine wall time is mostly other processes'."""
        begin = time.process_time()
        try:
            self.check(data)
        except self.expected:
            pass
        except Exception as exc:  # the finding: counted and kept, the run goes on
            if keep_failure:
                self._unexpected(data, exc)
        return time.process_time() - begin

    def _unexpected(self, data: bytes, exc: Exception) -> None:
        fig = self.figures
        fig.unexpected += 1
        if len(fig.samples) < SAMPLES:
            frames = [
                f for f in traceback.extract_tb(exc.__traceback__) if "bcfl_cli" in f.filename
            ]
            where = (
                f"{frames[-1].filename.split('bcfl_cli')[-1]}:{frames[-1].lineno}"
                if frames
                else "?"
            )
            fig.samples.append(f"{type(exc).__name__}: {str(exc)[:160]} at {where}")
        self._keep(data, "crash")

    def _keep(self, data: bytes, kind: str) -> None:
        if self.crashes is not None:
            self.crashes.mkdir(parents=True, exist_ok=True)
            name = f"{self.figures.target}-{kind}-{self.figures.inputs}"
            (self.crashes / name).write_bytes(data)

    def finish(self) -> Figures:
        self.figures.seconds = time.perf_counter() - self.started
        return self.figures


def run_mutate(
    target: str, inputs: int, *, seed: int = 0, crashes: Path | None = None, slow_s: float = 1.0
) -> Figures:
    """``inputs`` seeded mutations of ``target``'s seeds (and the seeds themselves), in process."""
    rng = random.Random(f"{target}/{seed}")
    pool = seeds(target)
    runner = Runner(target, "mutate", crashes, slow_s)
    for data in pool[:inputs]:
        runner.one(data)
    corpus = list(pool)
    while runner.figures.inputs < inputs:
        data = _mutate(rng, rng.choice(corpus), corpus)
        runner.one(data)
        if rng.random() < 0.01:  # keep a few mutants as new starting points (bounded)
            corpus.append(data)
            if len(corpus) > 256:
                del corpus[len(pool)]
    return runner.finish()


def run_atheris(
    target: str, inputs: int, *, seed: int, crashes: Path | None, slow_s: float, out: Path
) -> None:
    """In this process (one target per process): libFuzzer until ``inputs``; figures to ``out``."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        runner = Runner(target, "atheris", crashes, slow_s)

    def one(data: bytes) -> None:
        runner.one(data)
        if runner.figures.inputs >= inputs:
            out.write_text(json.dumps(asdict(runner.finish())))
            os._exit(0)  # libFuzzer would run on; the figures are written

    with tempfile.TemporaryDirectory() as corpus:
        for i, data in enumerate(seeds(target)):
            (Path(corpus) / f"seed-{i}").write_bytes(data)
        argv = [sys.argv[0], f"-seed={seed + 1}", f"-max_len={MAX_LEN}", "-timeout=120", corpus]
        atheris.Setup(argv, one)
        atheris.Fuzz()


def _atheris_in_subprocess(target: str, args: argparse.Namespace) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, __file__, "--worker", "--target", target]
        cmd += ["--inputs", str(args.inputs), "--seed", str(args.seed), "--out", str(out)]
        cmd += ["--slow-s", str(args.slow_s)]
        if args.crashes:
            cmd += ["--crashes", str(args.crashes)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if not out.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            fig = Figures(target, "atheris", unexpected=1)
            fig.samples.append(f"the fuzzing process ended with {proc.returncode}: {tail}")
            return fig
        fig = Figures(**json.loads(out.read_text()))
        found = _LIBFUZZER_STATUS.findall(proc.stderr)
        if found:
            fig.coverage = "cov {} ft {} corp {}".format(*found[-1])
        return fig


_LIBFUZZER_STATUS = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)")


def engine_available(name: str) -> str:
    if name != "auto":
        return name
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "mutate"
    return "atheris"


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    import logging

    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow-s", type=float, default=1.0, help="an input slower is a finding")
    parser.add_argument("--crashes", type=Path, help="write unexpected and slow inputs here")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        with _quiet_logs():
            run_atheris(
                args.target,
                args.inputs,
                seed=args.seed,
                crashes=args.crashes,
                slow_s=args.slow_s,
                out=args.out,
            )
        return 0
    engine = engine_available(args.engine)
    targets = TARGETS if args.target == "all" else (args.target,)
    results: list[Figures] = []
    for target in targets:
        if engine == "atheris":
            fig = _atheris_in_subprocess(target, args)
        else:
            with _quiet_logs():
                fig = run_mutate(
                    target, args.inputs, seed=args.seed, crashes=args.crashes, slow_s=args.slow_s
                )
        results.append(fig)
        print(fig.line(), flush=True)
        for sample in fig.samples:
            print(f"      {sample}", flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in results], indent=1) + "\n")
    return 1 if any(f.unexpected or f.slow for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
