"""Seeded random steps against real services, and the invariants checked after each.

A seed fixes the step list (action, engine, fault). Running it keeps a model: every backup
a run stored, the data it must restore to, whether verify passed it, and every file
dbbackup did not write. After each step:
  I1  every backup reported ok (or complete) and not removed by a legal retention
      decision restores identical to the data at its snapshot (a sample; all at the end);
  I2  the newest verified backup and the newest good backups of every series survive;
  I3  no command exits 0 when what it reported done is not done;
  I4  nothing dbbackup did not write is deleted or changed, and no secret appears in any
      output, log or storage object.
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.invariants.world import ENGINES, Result, World

DAY = 86400.0
CLOCK_JUMPS = (-400 * DAY, -DAY, -2 * 3600.0, 2 * 3600.0, DAY, 365 * DAY)
STORAGE_CLOCK_JUMPS = (-DAY, -3600.0, 3600.0, DAY)
COMMANDS = ("backup", "prune", "verify", "check", "check-read", "restore-latest")
PLANTS = (
    "foreign-file",  # a file of the operator's in a backup directory / the storage root
    "foreign-dir",  # a directory of the operator's named like a backup
    "copy-backup",  # a manifest (and signature) of another backup under a newer id
    "verified-copy",  # case 2: a verified.json copied into the newest backup's folder
    "truncate-chunk",  # case 6: a chunk truncated to 0 bytes (dedup)
    "chunk-symlink",  # case 7: a chunk-named symlink to the worker's signing key (local dedup)
    "manifest-symlink",  # case 7: a manifest.json symlinked to the identity file (local)
)
SIGNALS = ("kill9", "sigstop")
# the commands that write or delete in storage: a sampled restore follows each (verify
# restores what it passes itself; the others only read)
WRITERS = ("backup", "prune", "check-read")
# faults of the S3 path (through the fault proxy), by the command they can hit
S3_FAULTS = {
    "backup": ("s3-write-flip", "s3-down", "s3-read-flip"),
    "prune": ("s3-down",),
    "verify": ("s3-read-flip",),
    "check-read": ("s3-read-flip",),
    "restore-latest": ("s3-read-flip",),
}
# Faults that break an invariant on today's code: not drawn (in CI or the long mode) until
# their fix lands; then remove the entry. `--with-known-bugs` draws them all. Empty since
# the fixes of issue #23 (cases 1, 2, 3, 5, 6, 7) landed: every fault is drawn.
KNOWN_BUGS: dict[str, str] = {}


class InvariantBroken(AssertionError):
    """An invariant failed: the message names it, the step, and what was seen."""


@dataclass
class Step:
    action: str  # one of COMMANDS, or plant:KIND
    engine: str  # pg / my
    fault: str = "none"  # none, kill9, sigstop, clock:SECONDS
    note: str = ""  # what happened (filled in while running)
    seconds: float = 0.0  # how long the command took

    def __str__(self) -> str:
        fault = "" if self.fault == "none" else f" [{self.fault}]"
        return f"{self.action} {self.engine}{fault}" + (f"  -> {self.note}" if self.note else "")


@dataclass
class Known:
    """A backup the model knows: where it came from and what it must restore to."""

    engine: str
    backup_id: str
    fingerprint: dict | None  # the data at its snapshot (None: unknown origin)
    reported: bool  # a run exited 0 and listed it
    step: int
    verified: bool = False
    damaged: str = ""  # a fault destroyed data it names: not expected to restore
    chunks: frozenset[str] | None = None  # the chunk ids it names (dedup), read once
    gone: str = ""  # removed by a legal retention decision (at which step)

    @property
    def time(self) -> datetime:
        return backup_time(self.backup_id)


def say(line: str) -> None:
    """Print a progress line at once (a log file or pipe would hold it back)."""
    print(line, flush=True)


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@dataclass
class Config:
    """What one seed runs on, and which faults it may draw."""

    seed: int
    storage: str = "local"  # local / s3
    dedup: bool = False
    steps: int = 12
    known_bugs: bool = False
    signals: bool = True
    plants: tuple[str, ...] = PLANTS
    sample_restores: int = 1
    disk_mb: int = 0  # local storage on a tmpfs this small: backups meet a full disk

    def replay(self) -> str:
        args = [
            "python3 -m tests.invariants",
            f"--seed {self.seed}",
            f"--storage {self.storage}",
            "--dedup" if self.dedup else "--no-dedup",
            f"--steps {self.steps}",
        ]
        if self.disk_mb:
            args.append(f"--disk-mb {self.disk_mb}")
        if self.known_bugs:
            args.append("--with-known-bugs")
        if not self.signals:
            args.append("--no-signals")
        return " ".join(args)


def plan(config: Config) -> list[Step]:
    """The step list of a seed: a backup of each engine first, then random steps."""
    rng, storage_rng = random.Random(config.seed), random.Random(config.seed + 1_000_003)
    steps = [Step("backup", "pg"), Step("backup", "my")]
    plants = [
        p
        for p in config.plants
        if _drawn(config, p)
        and (config.dedup or p not in ("truncate-chunk", "chunk-symlink"))
        and (config.storage == "local" or p not in ("chunk-symlink", "manifest-symlink"))
    ]
    actions = [*COMMANDS, "plant"]
    weights = [6, 2.5, 1.5, 1, 0.7, 0.7, 1.5 if plants else 0]
    while len(steps) < config.steps:
        action = rng.choices(actions, weights)[0]
        engine = rng.choice(ENGINES)
        if action == "plant":
            steps.append(Step(f"plant:{rng.choice(plants)}", engine))
            continue
        fault = "none"
        roll = rng.random()
        if action != "restore-latest" and config.signals and roll < 0.25:
            fault = rng.choice(SIGNALS)
        elif config.storage == "s3" and roll < 0.5 and action in S3_FAULTS:
            fault = rng.choice(S3_FAULTS[action])
            if fault == "s3-read-flip" and action == "check-read" and config.dedup:
                fault = fault if _drawn(config, "check-read-flip") else "none"
        elif action in ("backup", "prune", "verify") and roll > 0.8:
            jump = rng.choice(CLOCK_JUMPS)
            if action != "verify" and jump > 3600 and not _drawn(config, "clock-fast"):
                jump = -jump  # no other draw: the seed's other steps stay as they were
            fault = f"clock:{jump:+.0f}"
        if fault == "none" and action in ("backup", "prune"):
            fault = _storage_clock(config, storage_rng)
        steps.append(Step(action, engine, fault))
    return steps


def _drawn(config: Config, fault: str) -> bool:
    """Whether a seed may draw this fault: yes, unless it is a known bug left out."""
    return config.known_bugs or fault not in KNOWN_BUGS


def _storage_clock(config: Config, rng: random.Random) -> str:
    """A storage clock that steps while the command runs (local dedup storage: the files
    it writes are dated off), drawn from its own stream so that it leaves the other draws
    of a seed alone."""
    if not (_drawn(config, "storage-clock") and config.storage == "local" and config.dedup):
        return "none"
    if rng.random() > 0.25:
        return "none"
    return f"storage-clock:{rng.choice(STORAGE_CLOCK_JUMPS):+.0f}"


@dataclass
class Harness:
    """Runs one seed's steps in a world and checks the invariants after each."""

    world: World
    config: Config
    log: Callable[[str], None] = say
    known: dict[tuple[str, str], Known] = field(default_factory=dict)
    must_survive: dict[str, str] = field(default_factory=dict)  # local path -> sha256
    foreign_keys: dict[str, str] = field(default_factory=dict)  # storage key -> sha256
    links: dict[str, str] = field(default_factory=dict)  # planted link name -> target
    done: list[Step] = field(default_factory=list)
    restores: int = 0
    listed: dict[str, dict[str, str]] = field(default_factory=dict)  # after the last step

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed * 7919 + 1)
        self.needles = self.world.keys.needles()
        keys = self.world.keys
        for path in (keys.identity_file, keys.signing_key_file, keys.dedup_key_file):
            self.must_survive[str(path)] = _sha(path.read_bytes())

    # --- running ---
    def run(self) -> None:
        steps = plan(self.config)
        try:
            for number, step in enumerate(steps, 1):
                started = time.monotonic()
                self.done.append(step)
                self.step(number, step)
                took = f"{time.monotonic() - started:.1f}s, the command {step.seconds:.1f}s"
                self.log(f"  {number:3} {step}  ({took})")
            self.check_restores(number, every=True)
        except InvariantBroken as exc:
            raise InvariantBroken(self.report(str(exc))) from None

    def report(self, what: str) -> str:
        lines = [
            f"invariant broken, seed {self.config.seed} ({self.config.storage}, "
            f"dedup {'on' if self.config.dedup else 'off'}): {what}",
            "steps:",
            *(f"  {n:3} {s}" for n, s in enumerate(self.done, 1)),
            f"replay: {self.config.replay()}",
        ]
        return "\n".join(lines)

    def step(self, number: int, step: Step) -> None:
        before = self.listed or {e: self.world.listing(e) for e in ENGINES}
        result: Result | None = None
        fingerprint = None
        if step.action.startswith("plant:"):
            step.note = self.plant(step.action.split(":", 1)[1], step.engine, before)
            # the user looks at their backups: what was planted shows, no secret does
            result = self.world.run(self.world.argv("list", self.world.servers[step.engine]))
        else:
            if step.action == "backup":
                step.note = self.world.change_data(self.rng, step.engine) + "; "
                fingerprint = self.world.fingerprint(step.engine)
            started = time.monotonic()
            result = self.command(step)
            step.seconds = time.monotonic() - started
            step.note += _summary(result)
        after = self.listed = {e: self.world.listing(e) for e in ENGINES}
        for engine in ENGINES:
            self.reconcile(number, step, engine, before[engine], after[engine], result, fingerprint)
        if result is not None:
            if not step.action.startswith("plant:"):
                self.check_reported(number, step, result, after[step.engine])
            self.check_secrets(number, result.text, f"the output of `{_shown(result.argv)}`")
        self.check_storage_secrets(number)  # first: a secret copied out is the worse break
        self.check_chunks(number)
        self.check_foreign(number)
        if step.action in WRITERS or step.action.startswith("plant:"):
            self.check_restores(number, every=False)

    def command(self, step: Step) -> Result:
        world, engine = self.world, step.engine
        server = world.servers[engine]
        argv = {
            "backup": world.argv("backup", server, "-d", world.db, "--json"),
            "prune": world.argv("prune", server, "--json"),
            "verify": world.argv("verify", server, "-d", world.db, "--json"),
            "check": world.argv("check", server, "--json"),
            "check-read": world.argv("check", server, "--read-data", "--json"),
            "restore-latest": world.argv(
                "restore", server, world.db, "--into", world.scratch_name(engine), "--json"
            ),
        }[step.action]
        clock = float(step.fault.split(":")[1]) if step.fault.startswith("clock:") else 0
        if step.fault in SIGNALS:
            return world.run_with_signal(argv, self.rng, step.fault, clock)
        proxy = world.proxy
        if step.fault.startswith("s3-"):
            if step.fault == "s3-write-flip":
                proxy.flips = 1
            elif step.fault == "s3-down":
                proxy.puts_before_down = self.rng.randint(0, 3)
                # mostly a short outage (the retries get through); down for good is slow:
                # a backup then spends ~2 min in its retries
                proxy.outage = self.rng.choice([1, 1, 3, 3, None])
            else:
                # a few reads, or (always for check --read-data, which re-reads) every read:
                # a path that corrupts consistently
                every = step.action == "check-read" or self.rng.random() < 0.3
                proxy.read_flips = 10**6 if every else self.rng.randint(1, 3)
        started = time.time()
        try:
            return world.run(argv, clock)
        finally:
            if proxy is not None:
                proxy.reset()
            if step.fault.startswith("storage-clock:"):
                world.redate_written_since(started - 1, float(step.fault.split(":")[1]))

    # --- the model ---
    def alive(self, engine: str) -> list[Known]:
        return [k for k in self.known.values() if k.engine == engine and not k.gone]

    def reconcile(
        self,
        number: int,
        step: Step,
        engine: str,
        before: dict[str, str],
        after: dict[str, str],
        result: Result | None,
        fingerprint: dict | None,
    ) -> None:
        """Take new backups into the model; every backup that went must have been allowed
        to go (I2)."""
        mine = step.action == "backup" and step.engine == engine
        reported = _reported_ids(result) if mine and result is not None else set()
        for backup_id, trust in after.items():
            if trust != "signed" or (engine, backup_id) in self.known:
                continue
            if not mine:
                raise InvariantBroken(
                    f"I4 at step {number}: backup {backup_id} of {engine} is trusted (signed) "
                    "but no backup run wrote it"
                )
            self.known[(engine, backup_id)] = Known(
                engine, backup_id, fingerprint, backup_id in reported, number
            )
        for backup_id in reported:
            if after.get(backup_id) != "signed":
                raise InvariantBroken(
                    f"I3 at step {number}: backup exited 0 reporting {backup_id} ok, but "
                    f"storage has it as {after.get(backup_id, 'missing')}"
                )
        protected = self.protected(engine, before, after, not step.fault.startswith("clock:"))
        for known in self.alive(engine):
            if after.get(known.backup_id) == "signed":
                continue
            seen = after.get(known.backup_id, "missing")
            if seen != "missing":
                raise InvariantBroken(
                    f"I1 at step {number}: backup {known.backup_id} of {engine} "
                    f"(stored at step {known.step}) is now {seen}"
                )
            if step.action not in ("backup", "prune") or known.backup_id in protected:
                why = protected.get(known.backup_id, f"a {step.action} deletes nothing")
                raise InvariantBroken(
                    f"I2 at step {number}: backup {known.backup_id} of {engine} (stored at "
                    f"step {known.step}) was deleted, but it must be kept: {why}"
                )
            known.gone = f"pruned at step {number}"

    def protected(
        self, engine: str, before: dict[str, str], after: dict[str, str], policy: bool
    ) -> dict[str, str]:
        """Backup ids no prune may delete, and why: the newest trusted, not future-dated
        backup, the newest verified one, every future-dated one; and with `policy` (the
        worker's clock is right) the 2 newest trusted (keep_last 2, daily 1). A worker
        whose clock is off counts by its clock: only the guarantees hold for it."""
        horizon = datetime.now(UTC) + timedelta(hours=1)
        trusted = {i for i, t in (before | after).items() if t == "signed"}
        future = {i for i in trusted if backup_time(i) > horizon}
        why = {i: "future-dated: never deleted automatically" for i in future}
        newest = sorted(trusted - future, key=backup_time, reverse=True)
        for i in newest[:2] if policy else []:
            why[i] = "one of the 2 newest (keep_last 2)"
        if newest:
            why[newest[0]] = "the newest good backup"
        verified = [k for k in self.alive(engine) if k.verified]
        if verified:
            newest = max(verified, key=lambda k: k.time)
            why[newest.backup_id] = "the newest verified backup"
        return why

    # --- I3: what a command reported done is done ---
    def check_reported(self, number: int, step: Step, result: Result, listed: dict) -> None:
        data = _json(result.stdout) if not result.killed else None
        engine = step.engine
        if step.action == "verify":  # every database it passed, even when another failed
            for outcome in (data or {}).get("databases", []):
                if outcome.get("status") != "ok":
                    continue
                known = self.known.get((engine, outcome["backup_id"]))
                if known is None:
                    raise InvariantBroken(
                        f"I3 at step {number}: verify passed {outcome['backup_id']}, a backup "
                        "no run wrote"
                    )
                known.verified = True
                if not known.damaged:
                    self.restore_matches(number, known, f"verify passed it at step {number}")
        if result.code != 0 or result.killed:
            return
        if step.action == "prune":
            for item in data or []:
                present = listed.get(item["backup_id"]) is not None
                if (
                    item.get("outcome") == "removed"
                    and present
                    and item.get("database") == self.world.db
                ):
                    raise InvariantBroken(
                        f"I3 at step {number}: prune exited 0 saying {item['backup_id']} was "
                        "removed, but its manifest is still there"
                    )
        elif step.action == "check-read":
            for known in self.alive(engine):
                if known.damaged and "truncated" in known.damaged:
                    raise InvariantBroken(
                        f"I3 at step {number}: check --read-data exited 0, but backup "
                        f"{known.backup_id} names a chunk that was {known.damaged}"
                    )
        elif step.action == "restore-latest":
            restored = (data or {}).get("backup_id")
            target = (data or {}).get("target_database")
            known = self.known.get((engine, restored))
            if known is None or known.fingerprint is None:
                raise InvariantBroken(
                    f"I3 at step {number}: restore of latest exited 0 with backup {restored}, "
                    "which no backup run wrote"
                )
            got = self.world.fingerprint(engine, target)
            self.world.admin(engine).drop(target)
            if got != known.fingerprint and not known.damaged:
                raise InvariantBroken(
                    f"I3 at step {number}: restore of latest ({restored}) exited 0 but the "
                    "restored tables differ from the data at its snapshot"
                )

    # --- I1: restores ---
    def check_restores(self, number: int, every: bool) -> None:
        candidates = [
            k for e in ENGINES for k in self.alive(e) if k.fingerprint is not None and not k.damaged
        ]
        if not every:
            candidates = self.rng.sample(
                candidates, min(self.config.sample_restores, len(candidates))
            )
        for known in candidates:
            self.restore_matches(number, known, "end of run" if every else "sampled")

    def check_chunks(self, number: int) -> None:
        """I1, cheaply after every step on a dedup storage: every chunk a backup that must
        restore names is stored (a sampled restore would miss one a later backup puts back)."""
        if not self.world.dedup:
            return
        stored = self.world.chunk_ids()
        for engine in ENGINES:
            for known in self.alive(engine):
                if known.damaged or known.fingerprint is None:
                    continue
                if known.chunks is None:
                    manifest = self.world.manifest(engine, known.backup_id)
                    order = manifest.chunks.order if manifest and manifest.chunks else []
                    known.chunks = frozenset(c for c, _ in order)
                missing = known.chunks - stored
                if missing:
                    raise InvariantBroken(
                        f"I1 at step {number}: backup {known.backup_id} of {engine} (stored at "
                        f"step {known.step}) names {len(missing)} chunk(s) no longer stored, "
                        f"e.g. {min(missing)[:16]}"
                    )

    def restore_matches(self, number: int, known: Known, why: str) -> None:
        world = self.world
        target = world.scratch_name(known.engine)
        argv = world.argv(
            "restore", world.servers[known.engine], world.db, "--into", target,
            "--backup-id", known.backup_id,
        )  # fmt: skip
        result = world.run(argv)
        self.restores += 1
        self.check_secrets(number, result.text, f"the output of `{_shown(argv)}`")
        origin = "reported ok" if known.reported else "complete, from an interrupted run"
        if result.code != 0:
            raise InvariantBroken(
                f"I1 at step {number} ({why}): backup {known.backup_id} of {known.engine} "
                f"({origin} at step {known.step}) does not restore: "
                f"{result.stderr.strip()[-600:]}"
            )
        got = world.fingerprint(known.engine, target)
        world.admin(known.engine).drop(target)
        if got != known.fingerprint:
            raise InvariantBroken(
                f"I1 at step {number} ({why}): backup {known.backup_id} of {known.engine} "
                f"({origin} at step {known.step}) restores to other data: {got} != "
                f"{known.fingerprint}"
            )

    # --- I4: foreign files, secrets ---
    def check_foreign(self, number: int) -> None:
        for name, digest in self.must_survive.items():
            path = Path(name)
            if not path.exists() or _sha(path.read_bytes()) != digest:
                what = "deleted" if not path.exists() else "changed"
                raise InvariantBroken(
                    f"I4 at step {number}: {name}, which dbbackup did not write, was {what}"
                )
        for key, digest in self.foreign_keys.items():
            try:
                data = self.world.load_storage().get_bytes(key)
            except Exception:  # noqa: BLE001
                data = None
            if data is None or _sha(data) != digest:
                what = "deleted" if data is None else "changed"
                raise InvariantBroken(
                    f"I4 at step {number}: {key}, which dbbackup did not write, was {what}"
                )
        for link, target in self.links.items():
            root = self.world.storage_path
            if not any(p.is_symlink() and str(p.readlink()) == target for p in root.rglob("*")):
                raise InvariantBroken(
                    f"I4 at step {number}: the planted link {link} -> {target} was deleted"
                )

    def check_secrets(self, number: int, text: str, where: str) -> None:
        data = text.encode(errors="replace")
        for what, needle in self.needles.items():
            if needle in data:
                raise InvariantBroken(f"I4 at step {number}: the {what} appears in {where}")

    def check_storage_secrets(self, number: int) -> None:
        for key, data in self.world.changed_objects().items():
            for what, needle in self.needles.items():
                if len(needle) >= 16 and needle in data:
                    raise InvariantBroken(
                        f"I4 at step {number}: the {what} appears in the storage object {key}"
                    )

    # --- planting (as someone who can write the storage) ---
    def plant(self, kind: str, engine: str, listed: dict[str, dict[str, str]]) -> str:
        from prefect_dbbackup.blocks.errors import DbBackupError

        from tests.invariants import plants

        try:
            return plants.PLANTERS[kind](self, engine, listed[engine])
        except (OSError, DbBackupError) as exc:  # a full disk stops the one who plants too
            return f"not planted: {exc}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _reported_ids(result: Result) -> set[str]:
    if result.code != 0 or result.killed:
        return set()
    data = _json(result.stdout)
    if not isinstance(data, dict):
        raise InvariantBroken(f"I3: backup exited 0 without its JSON report: {result.stdout!r}")
    return {o["backup_id"] for o in data.get("databases", []) if o.get("status") == "ok"}


def _summary(result: Result) -> str:
    fault = f"{result.fault}; " if result.fault else ""
    end = "killed" if result.killed else f"exit {result.code}"
    tail = ""
    if result.code not in (0, None) and not result.killed:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        tail = f": {lines[-1][:160]}" if lines else ""
    return f"{fault}{end}{tail}"


def _shown(argv: list[str]) -> str:
    return shlex.join(["dbbackup", *argv])
