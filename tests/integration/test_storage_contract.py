"""The BackupStorage contract, run against every storage: local disk, the real S3 server
(SeaweedFS) and memory. A storage passes all of it or is not a storage.

Differences a test cannot avoid (how to reach under a storage to plant a foreign object,
what a storage that is down looks like, where a put in progress shows) are the `Store`
fixture's, never the tests'.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.errors import IntegrityError, StorageError
from prefect_dbbackup.blocks.local_storage import ForeignLink, LocalBackupStorage
from prefect_dbbackup.blocks.memory import MemoryBackupStorage
from prefect_dbbackup.blocks.s3 import MIN_PART_SIZE, MiB, S3BackupStorage
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound, UnsafeKey
from prefect_dbbackup.tasks.prune import OWN_NAMES

from tests.faulty_s3 import FaultyS3
from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

DUMP = "dump.pgc.zst.age"


@dataclass
class HeldPut:
    storage: BackupStorage  # the store as the put reaches it (S3: through a holding proxy)
    source: Path
    midway: threading.Event
    # makes what is held fail, once the stop was sent (S3: boto3 waits for its part
    # uploads before it lets the stop out of put_file)
    release: Callable[[], None] = lambda: None


@dataclass
class Store:
    """A storage under test and the few storage-specific probes the tests need."""

    storage: BackupStorage
    down: Callable[[], BackupStorage] | None  # the same kind of storage, unreachable
    plant_raw: Callable[[str, bytes], None] | None  # write an object behind the storage's back
    # a put held in its middle: (storage, source) -> (the source to put, an event set once
    # the put is provably writing); the put may go on when the context exits
    held_put: Callable[[BackupStorage, bytes], AbstractContextManager[HeldPut]] | None
    leftovers: Callable[[], list[str]]  # traces of unfinished puts (temp files, uploads)
    keeps_objects_in_memory: bool = False
    plant_link: Callable[[str, Path], None] | None = None  # a symbolic link behind its back


def _local(tmp_path: Path) -> Store:
    root = tmp_path / "backups"
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")

    def plant(name: str, data: bytes) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    def temps() -> list[str]:
        return [str(p) for p in root.rglob(".tmp-*")] if root.is_dir() else []

    def link(name: str, target: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)

    @contextlib.contextmanager
    def held(storage: BackupStorage, data: bytes) -> Iterator[HeldPut]:
        """The source is a FIFO: its first MiB is written, then nothing until the context
        exits, so the put waits in a read with its temp file open."""
        fifo = tmp_path / "spool.fifo"
        os.mkfifo(fifo)
        midway, done = threading.Event(), threading.Event()

        def feed() -> None:
            with open(fifo, "wb") as pipe:  # opens once put_file opens the other end
                pipe.write(data[:MiB])
                pipe.flush()
                deadline = time.monotonic() + 60
                while not temps() and time.monotonic() < deadline:
                    time.sleep(0.01)
                midway.set()
                done.wait(120)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            yield HeldPut(storage, fifo, midway)
        finally:
            done.set()
            feeder.join(10)

    return Store(
        storage=LocalBackupStorage(path=str(root)),
        down=lambda: LocalBackupStorage(path=str(blocker / "backups")),
        plant_raw=plant,
        held_put=held,
        leftovers=temps,
        plant_link=link,
    )


def _s3(server: SeaweedFS, tmp_path: Path) -> Store:
    from prefect_aws import AwsCredentials

    bucket = server.make_bucket("dbb-tests")
    prefix = f"contract-{uuid.uuid4().hex[:8]}"
    credentials = AwsCredentials(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    fields = {"bucket": bucket, "prefix": prefix, "region": "us-east-1", "path_style": True}
    client = server.client()

    def down() -> S3BackupStorage:
        closed = socket_port()
        return S3BackupStorage(
            **fields,
            endpoint_url=f"http://127.0.0.1:{closed}",
            credentials=credentials,
            max_attempts=1,
            connect_timeout=2,
        )

    def uploads() -> list[str]:
        return server.incomplete_uploads(bucket, prefix + "/")

    @contextlib.contextmanager
    def held(storage: BackupStorage, data: bytes) -> Iterator[HeldPut]:
        """The put goes through a proxy that lets its first part pass and holds the others:
        the upload is provably begun, and cannot finish (held parts are answered 503)."""
        source = tmp_path / "spool.age"
        source.write_bytes(data)
        with FaultyS3(server.endpoint) as proxy:
            proxy.parts_before_hold = 1
            through = S3BackupStorage(
                **fields, endpoint_url=proxy.endpoint, credentials=credentials
            )
            try:
                yield HeldPut(through, source, proxy.holding, proxy.release.set)
            finally:
                proxy.release.set()

    return Store(
        storage=S3BackupStorage(**fields, endpoint_url=server.endpoint, credentials=credentials),
        down=down,
        plant_raw=lambda name, data: client.put_object(
            Bucket=bucket, Key=f"{prefix}/{name}", Body=data
        ),
        held_put=held,
        leftovers=uploads,
    )


def socket_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory() -> Store:
    return Store(
        storage=MemoryBackupStorage(space=uuid.uuid4().hex),
        down=None,  # process memory cannot be unreachable
        plant_raw=None,  # nothing can write into it but the storage
        held_put=None,  # a put is one assignment: it cannot stop midway
        leftovers=list,
        keeps_objects_in_memory=True,
    )


@pytest.fixture(params=["local", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "s3":
        return _s3(request.getfixturevalue("s3_server"), tmp_path)
    return _local(tmp_path) if request.param == "local" else _memory()


def _file(tmp_path: Path, data: bytes, name: str = "spool.age") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# round trips


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 40], ids=["empty", "1", "10k"])
def test_put_bytes_then_get_bytes_exists_and_open_read_return_it(store, tmp_path, data):
    s = store.storage
    key = "srv/db/20261127T031500Z-3f9a/manifest.json"
    assert not s.exists(key)
    s.put_bytes(key, data)
    assert s.exists(key)
    assert s.get_bytes(key) == data
    with s.open_read(key, tmp_path) as f:
        assert f.read() == data
        f.seek(0)  # restore reads the object twice: check, then load
        assert f.read() == data


def test_checked_reads_sizes_and_copies_inside_the_store(store):
    """get_checked returns what is stored; stored_size is its size (None: no object);
    copy makes a second object, replacing the target and leaving the source."""
    s, data = store.storage, bytes(range(256)) * 40
    s.put_bytes("a/chunk", data)
    s.put_bytes("b/chunk", b"older")
    assert s.get_checked("a/chunk") == data
    assert s.stored_size("a/chunk") == len(data) and s.stored_size("a/none") is None
    s.copy("a/chunk", "b/chunk")
    s.copy("a/chunk", "c/d/chunk")
    assert s.get_bytes("b/chunk") == s.get_bytes("c/d/chunk") == s.get_bytes("a/chunk") == data
    with pytest.raises(ObjectNotFound):
        s.copy("a/none", "b/none")
    with pytest.raises(ObjectNotFound):
        s.get_checked("a/none")
    assert s.list_keys() == ["a/chunk", "b/chunk", "c/d/chunk"]
    assert store.leftovers() == []


def test_put_file_then_open_read_returns_the_file(store, tmp_path):
    data = os.urandom(300_000)
    key = f"srv/db/20261127T031500Z-3f9a/{DUMP}"
    store.storage.put_file(key, _file(tmp_path, data), _sha(data))
    with store.storage.open_read(key, tmp_path) as f:
        assert f.read() == data
    assert store.storage.get_bytes(key) == data


def test_a_put_replaces_the_object_whole(store, tmp_path):
    s, key = store.storage, "srv/db/20261127T031500Z-3f9a/verified.json"
    s.put_bytes(key, b"first version, the longer one")
    s.put_bytes(key, b"second")
    assert s.get_bytes(key) == b"second"
    s.put_file(key, _file(tmp_path, b"third"))
    assert s.get_bytes(key) == b"third"
    assert s.list_keys("srv") == [key]


def test_get_bytes_refuses_an_object_above_its_limit_without_reading_it_whole(store, tmp_path):
    """A manifest-sized read of a planted huge object fails, naming the key; the object
    stays, and open_read (which streams) still reads it."""
    from prefect_dbbackup.blocks.storage import ObjectTooLarge

    s, key = store.storage, "srv/db/20261127T031500Z-3f9a/manifest.json"
    data = os.urandom(5000)
    s.put_bytes(key, data)
    assert s.get_bytes(key, limit=5000) == data
    with pytest.raises(ObjectTooLarge, match=r"5000 bytes.*not written by dbbackup") as raised:
        s.get_bytes(key, limit=4999)
    assert key in str(raised.value)
    with s.open_read(key, tmp_path) as f:
        assert f.read() == data


# list_keys


def test_list_keys_matches_whole_segments_only_and_sorts(store):
    s = store.storage
    keys = [
        "srv/shop/20261127T031500Z-3f9a/manifest.json",
        "srv/shop/20261127T031500Z-3f9a/dump.sql.zst.age",
        "srv/shop/20261126T031500Z-0000/manifest.json",
        "srv/shop2/20261127T031500Z-3f9a/manifest.json",
        "srv/_globals/20261127T031500Z-3f9a/manifest.json",
        "srv2/shop/20261127T031500Z-3f9a/manifest.json",
        "top",
    ]
    for key in keys:
        s.put_bytes(key, key.encode())
    shop = sorted(k for k in keys if k.startswith("srv/shop/"))
    assert s.list_keys("srv/shop") == shop
    assert s.list_keys("srv/shop/") == shop
    assert s.list_keys("srv/sh") == []  # 'srv/sh' is no segment of 'srv/shop/...'
    assert s.list_keys("srv") == sorted(k for k in keys if k.startswith("srv/"))
    assert s.list_keys("") == sorted(keys)
    assert s.list_keys("srv/shop/20261127T031500Z-3f9a/manifest.json") == []  # an object
    assert s.list_keys("top") == []
    assert s.list_keys("nothing/here") == []


def test_list_keys_of_an_empty_storage_is_empty(store):
    assert store.storage.list_keys() == []
    assert store.storage.list_keys("srv/db/") == []


def test_objects_whose_names_break_the_key_rules_are_not_listed(store):
    if store.plant_raw is None:
        pytest.skip("nothing but the storage itself can write into it")
    good = "srv/db/20261127T031500Z-3f9a/manifest.json"
    store.storage.put_bytes(good, b"{}")
    for name in ("srv/db/notes from the admin.txt", "srv/.DS_Store", "srv/db/caf\u00e9"):
        store.plant_raw(name, b"not written by dbbackup")
    assert store.storage.list_keys() == [good]
    assert store.storage.list_keys("srv/db") == [good]


# delete


def test_delete_removes_one_object_and_a_missing_one_is_no_error(store):
    s = store.storage
    gone, kept = "srv/db/1/manifest.json", "srv/db/1/manifest.json.sig"
    s.put_bytes(gone, b"a")
    s.put_bytes(kept, b"b")
    s.delete(gone)
    assert not s.exists(gone)
    with pytest.raises(ObjectNotFound):
        s.get_bytes(gone)
    assert s.list_keys("srv") == [kept]
    s.delete(gone)  # again: nothing there, nothing to do
    s.delete("srv/db")  # a prefix is no object: nothing happens under it
    s.delete("never/was/here")
    assert s.get_bytes(kept) == b"b"


# missing objects


def test_reading_a_missing_object_raises_object_not_found(store, tmp_path):
    s = store.storage
    s.put_bytes("srv/db/1/manifest.json", b"{}")
    for key in ("srv/db/1/missing.json", "srv/db", "srv/db/1/manifest.json/under", "x"):
        assert not s.exists(key)
        with pytest.raises(ObjectNotFound) as got:
            s.get_bytes(key)
        assert key in str(got.value)
        with pytest.raises(ObjectNotFound), s.open_read(key, tmp_path):
            pass
    # not retried: waiting does not make an object appear
    assert issubclass(ObjectNotFound, StorageError) and not ObjectNotFound.retryable


# unsafe keys

UNSAFE = [
    "",
    "/abs/key",
    "a//b",
    "a/",
    "..",
    "../escape",
    "a/../../escape",
    "./a",
    "a/.",
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\tb",
    "a\\b",
    "..\\escape",
    ".hidden",
    "a/.tmp-manifest.json.abcd1234",
    "a b",
    "caf\u00e9",
    "a:b",
    "a*b",
    "x" * 256,
    "a/" * 512 + "b",  # 1025 characters
]


@pytest.mark.parametrize("key", UNSAFE, ids=repr)
def test_unsafe_keys_are_refused_by_every_method_and_nothing_is_written(store, tmp_path, key):
    s = store.storage
    source = _file(tmp_path, b"data")
    calls = {
        "put_bytes": lambda: s.put_bytes(key, b"data"),
        "put_file": lambda: s.put_file(key, source),
        "get_bytes": lambda: s.get_bytes(key),
        "exists": lambda: s.exists(key),
        "delete": lambda: s.delete(key),
        "open_read": lambda: s.open_read(key, tmp_path).__enter__(),
        "get_checked": lambda: s.get_checked(key),
        "stored_size": lambda: s.stored_size(key),
        "copy from": lambda: s.copy(key, "a/b"),
        "copy to": lambda: s.copy("a/b", key),
    }
    if key not in ("", "a/"):  # '' lists everything, a trailing '/' is allowed on a prefix
        calls["list_keys"] = lambda: s.list_keys(key)
        calls["collect_garbage"] = lambda: s.collect_garbage(key, datetime.now(UTC), OWN_NAMES)
    for name, call in calls.items():
        with pytest.raises(UnsafeKey, match="unsafe storage key"):
            call()
            pytest.fail(f"{name} accepted {key!r}")
    assert s.list_keys() == []
    assert store.leftovers() == []
    if store.plant_raw is not None:  # nothing appeared beside the storage either
        assert sorted(p.name for p in tmp_path.iterdir()) in (
            ["spool.age"],
            ["backups", "not-a-dir", "spool.age"],
            ["not-a-dir", "spool.age"],
        )


def test_an_unsafe_key_is_a_configuration_error_not_a_retryable_one():
    assert UnsafeKey.exit_code == 3 and not UnsafeKey.retryable


# atomicity and confirmation


def test_a_file_that_is_not_what_was_written_is_refused_and_nothing_changes(store, tmp_path):
    """put_file with the sha256 taken while the spool was written: a spool damaged since is
    refused before anything is stored, and the previous object stays."""
    s, key = store.storage, f"srv/db/1/{DUMP}"
    s.put_bytes(key, b"previous")
    data = os.urandom(50_000)
    with pytest.raises(IntegrityError, match="no longer has the sha256"):
        s.put_file(key, _file(tmp_path, data), _sha(data + b"!"))
    assert s.get_bytes(key) == b"previous"
    with pytest.raises(IntegrityError):
        s.put_file(f"srv/db/2/{DUMP}", _file(tmp_path, data), _sha(b""))
    assert s.list_keys("srv") == [key]
    assert store.leftovers() == []


def test_a_missing_source_file_is_a_storage_error_and_stores_nothing(store, tmp_path):
    with pytest.raises(StorageError, match="spool.age"):
        store.storage.put_file(f"srv/db/1/{DUMP}", tmp_path / "spool.age")
    assert store.storage.list_keys() == []


class _Stop(BaseException):
    """What the signal handler raises: stands for Ctrl-C / SIGTERM / a cancellation."""


@pytest.fixture
def stop_signal() -> Iterator[Callable[[], None]]:
    """A function that makes the main thread raise _Stop wherever it is (SIGUSR1)."""

    def handler(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread().ident
    yield lambda: signal.pthread_kill(main, signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, previous)


def test_a_put_interrupted_midway_leaves_no_object_and_no_garbage(store, stop_signal):
    """The run stops while put_file is writing: no object (not even a part) is visible under
    the key, the previous one stays, and collect_garbage removes what the put left behind.
    The put is held in its middle (the Store's held_put), so the stop always lands in it."""
    if store.held_put is None:
        pytest.skip("a put to this storage cannot be stopped midway")
    s, key = store.storage, f"srv/db/1/{DUMP}"
    s.put_bytes(key, b"previous")
    with store.held_put(s, os.urandom(3 * MIN_PART_SIZE + MiB)) as held:

        def stop_once_midway() -> None:
            if held.midway.wait(60):
                stop_signal()
                time.sleep(1)
                held.release()

        watcher = threading.Thread(target=stop_once_midway, daemon=True)
        watcher.start()
        with pytest.raises(_Stop):
            held.storage.put_file(key, held.source)
        watcher.join()
    assert s.get_bytes(key) == b"previous"
    assert s.list_keys("srv") == [key]
    s.collect_garbage("srv", datetime.now(UTC) + timedelta(days=1), OWN_NAMES)
    assert store.leftovers() == []
    assert s.list_keys("srv") == [key] and s.get_bytes(key) == b"previous"


def test_garbage_collection_of_a_clean_storage_removes_nothing(store):
    store.storage.put_bytes(f"srv/db/1/{DUMP}", b"x")
    assert store.storage.collect_garbage("srv/", datetime.now(UTC), OWN_NAMES) == []
    assert store.storage.collect_garbage("", datetime.now(UTC), OWN_NAMES) == []
    assert store.storage.list_keys() == [f"srv/db/1/{DUMP}"]


# store times and locks (what chunk garbage collection and prune decide on)


def test_list_modified_lists_what_list_keys_lists_with_the_stores_own_times(store):
    s = store.storage
    keys = ["srv/db/1/manifest.json", "srv/db/2/manifest.json", "srv2/db/1/manifest.json"]
    for key in keys:
        s.put_bytes(key, b"x")
    now = s.clock()  # an empty local storage has no clock yet: asked after the puts
    for prefix in ("", "srv", "srv/", "srv/db/1", "sr", "nothing"):
        listed = s.list_modified(prefix)
        assert sorted(listed) == s.list_keys(prefix), prefix
    times = s.list_modified()
    # the store's clock, at its resolution (S3: whole seconds), not a worker's: written
    # in the last minute of the store's time, not after it
    slack = timedelta(seconds=1)
    assert all(t.tzinfo and now - timedelta(minutes=1) <= t <= now + slack for t in times.values())


def test_an_object_no_lock_keeps_is_not_locked(store):
    s = store.storage
    s.put_bytes("srv/db/1/manifest.json", b"x")
    assert s.locked_until("srv/db/1/manifest.json") is None
    assert s.locked_until("srv/db/2/manifest.json") is None  # missing: nothing keeps it


def test_an_object_lock_keeps_an_object_until_its_date_and_delete_says_so(s3_server):
    """Object lock (S3 only): the retain-until date is reported until it passes, and a
    delete of the object is refused with ObjectLocked, which names the key."""
    from prefect_aws import AwsCredentials
    from prefect_dbbackup.blocks.errors import ObjectLocked

    s = S3BackupStorage(
        bucket=s3_server.make_bucket("dbb-locked", object_lock=True),
        prefix=f"contract-{uuid.uuid4().hex[:8]}",
        region="us-east-1",
        endpoint_url=s3_server.endpoint,
        path_style=True,
        credentials=AwsCredentials(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY),
        object_lock_mode="GOVERNANCE",
        object_lock_days=1,
    )
    key = "srv/db/1/manifest.json"
    s.put_bytes(key, b"x")
    until = s.locked_until(key)
    assert until is not None
    assert timedelta(hours=23) < until - s.clock() <= timedelta(days=1, minutes=5)
    assert s.locked_until("srv/db/2/manifest.json") is None
    with pytest.raises(ObjectLocked, match="manifest.json"):
        s.delete(key)
    assert s.get_bytes(key) == b"x"


# large objects


def _peak(call: Callable[[], object]) -> int:
    """Bytes of Python memory allocated at the peak of call, above what was there before."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_object_goes_both_ways_in_bounded_memory(store, tmp_path):
    """Bigger than one S3 multipart part: stored and read back equal, and (except in the
    memory storage, which holds it by design) never held in memory whole: the peak stays
    under half the object."""
    size = 2 * MIN_PART_SIZE + 3 * MiB + 5
    data = os.urandom(size)
    source, digest = _file(tmp_path, data), _sha(data)
    del data
    key = f"srv/db/1/{DUMP}"
    s = store.storage
    bound = size + 4 * MiB if store.keeps_objects_in_memory else size // 2
    # what a client costs once (S3: loading boto3's service model) is not per object
    s.put_file("warm/up", _file(tmp_path, b"warm up", "small"))
    with s.open_read("warm/up", tmp_path) as f:
        f.read()

    assert _peak(lambda: s.put_file(key, source, digest)) < bound

    def read_back() -> str:
        sha = hashlib.sha256()
        with s.open_read(key, tmp_path) as f:
            while block := f.read(MiB):
                sha.update(block)
        return sha.hexdigest()

    got: list[str] = []
    assert _peak(lambda: got.append(read_back())) < bound
    assert got == [digest]
    assert s.list_keys("srv/db") == [key]


# a storage that is down, check()


def test_check_passes_on_a_working_storage(store):
    store.storage.check()
    assert store.storage.describe()


def test_a_storage_that_is_down_says_so_with_a_retryable_storage_error(store, tmp_path):
    if store.down is None:
        pytest.skip("this storage cannot be unreachable")
    s = store.down()
    key = "srv/db/1/manifest.json"
    calls = {
        "check": s.check,
        "put_bytes": lambda: s.put_bytes(key, b"{}"),
        "put_file": lambda: s.put_file(key, _file(tmp_path, b"{}")),
        "get_bytes": lambda: s.get_bytes(key),
        "open_read": lambda: s.open_read(key, tmp_path).__enter__(),
        "exists": lambda: s.exists(key),
        "list_keys": lambda: s.list_keys("srv"),
        "delete": lambda: s.delete(key),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as got:
            call()
            pytest.fail(f"{name} did not fail")
        assert not isinstance(got.value, ObjectNotFound), name
        assert got.value.retryable, name


def test_memory_storages_with_one_space_share_objects_and_others_do_not():
    """Flows load blocks by name, each load a new instance: one space, one set of objects."""
    space = uuid.uuid4().hex
    MemoryBackupStorage(space=space).put_bytes("srv/db/1/manifest.json", b"{}")
    assert MemoryBackupStorage(space=space).get_bytes("srv/db/1/manifest.json") == b"{}"
    assert MemoryBackupStorage(space=space + "-other").list_keys() == []


def test_open_read_gives_a_binary_file(store, tmp_path):
    store.storage.put_bytes("k", b"abc")
    with store.storage.open_read("k", tmp_path) as f:
        assert isinstance(f.read(0), bytes)
        assert f.seekable()
        f.seek(1)
        assert f.read() == b"bc"


# links (only a local storage can hold one)


def test_links_are_never_followed_listed_copied_or_deleted(store, tmp_path):
    """A link planted in the storage, as a file or as a directory, is foreign: not listed,
    refused by every read, write and delete without a byte of its target in the error,
    and left as it is; nothing outside the storage is read, written or removed."""
    if store.plant_link is None:
        pytest.skip("only a local storage can hold a symbolic link")
    secret = _file(tmp_path, b"AGE-SECRET-KEY-1PLANTEDTAIL", "signing.key")
    outside = tmp_path / "elsewhere"
    (outside / "db" / "1").mkdir(parents=True)
    (outside / "db" / "1" / "manifest.json").write_bytes(b"AGE-SECRET-KEY-1DIRTAIL")
    s = store.storage
    ours = "srv/db/1/dump.pgc.zst.age"
    s.put_bytes(ours, b"ours")
    store.plant_link("srv/db/1/manifest.json", secret)
    store.plant_link("srv/db/1/.tmp-manifest.json.abcd1234", secret)
    store.plant_link("other", outside)  # a server directory pointing out of the storage
    assert s.list_keys() == [ours] and list(s.list_modified()) == [ours]
    assert s.list_keys("other") == [] and s.list_keys("other/db") == []
    far = datetime.now(UTC) + timedelta(days=1)
    assert s.collect_garbage("", far, ["manifest.json"]) == []
    refused = [
        lambda key: s.get_bytes(key),
        lambda key: s.open_read(key, tmp_path).__enter__(),
        lambda key: s.exists(key),
        lambda key: s.delete(key),
        lambda key: s.put_bytes(key, b"written through"),
    ]
    for key in ("srv/db/1/manifest.json", "other/db/1/manifest.json", "other/db/2/new"):
        for call in refused:
            with pytest.raises(ForeignLink) as caught:
                call(key)
            assert "TAIL" not in str(caught.value) and "symbolic link" in str(caught.value)
    assert secret.read_bytes() == b"AGE-SECRET-KEY-1PLANTEDTAIL"
    assert (outside / "db" / "1" / "manifest.json").read_bytes() == b"AGE-SECRET-KEY-1DIRTAIL"
    assert sorted(p.name for p in outside.rglob("*")) == ["1", "db", "manifest.json"]
    root = Path(s.path)
    assert (root / "srv/db/1/manifest.json").readlink() == secret
    assert (root / "srv/db/1/.tmp-manifest.json.abcd1234").is_symlink()
    assert (root / "other").readlink() == outside
    copies = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert [p.read_bytes() for p in copies] == [b"ours"]


def test_a_root_that_is_a_link_is_the_operators_choice_and_works(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "backups").symlink_to(real)
    s = LocalBackupStorage(path=str(tmp_path / "backups"))
    s.put_bytes("srv/db/1/manifest.json", b"{}")
    assert s.list_keys() == ["srv/db/1/manifest.json"]
    assert s.get_bytes("srv/db/1/manifest.json") == b"{}" and s.exists("srv/db/1/manifest.json")
    s.delete("srv/db/1/manifest.json")
    assert s.list_keys() == [] and list(real.iterdir()) == []
