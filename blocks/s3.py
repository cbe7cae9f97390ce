"""S3 backup storage: AWS S3 and S3-compatible stores (MinIO, SeaweedFS, R2, ...)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import tempfile
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    NoCredentialsError,
)
from botocore.loaders import create_loader
from prefect_aws import AwsCredentials
from prefect_dbbackup.blocks.bounds import RequestSeconds
from prefect_dbbackup.blocks.errors import (
    AuthError,
    ConfigError,
    DbBackupError,
    DiskFull,
    ObjectLocked,
    StorageError,
    is_disk_full,
)
from prefect_dbbackup.blocks.storage import (
    CHUNK,
    MAX_KEY,
    SMALL_OBJECT_LIMIT,
    BackupStorage,
    ObjectNotFound,
    ReadFault,
    UnsafeKey,
    check_key,
    is_safe_key,
    list_prefix,
    spool_mismatch,
    too_large,
)
from pydantic import Field, PrivateAttr, model_validator
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

MiB = 1 << 20
MIN_PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
AUTH_CODES = {
    "AccessDenied",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
MD5_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")
# downloads queue at most 16 chunks of 256 KiB for the disk (s3transfer's default: 100),
# so memory stays a few MiB whatever the object's size
DOWNLOAD_CONFIG = TransferConfig(max_io_queue=16)


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)


# failures of a local file (the spool, the work dir), not of S3
LOCAL_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# what a failed S3 call raises (botocore, boto3/s3transfer wrappers, sockets and files);
# anything else (TypeError, AttributeError, ...) is a bug and must surface as one
S3_ERRORS = (
    ClientError,
    BotoCoreError,
    Boto3Error,
    S3UploadFailedError,
    S3DownloadFailedError,
    RetriesExceededError,
    OSError,
)


def part_size(size: int) -> int:
    """Smallest part size (whole MiB, at least 8 MiB) that fits `size` bytes in 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART_SIZE, -(-needed // MiB) * MiB)


def file_digests(path: Path, chunk: int) -> tuple[int, str, str]:
    """(size, sha256, S3 ETag) of a file as put_file uploads it, in one read: the MD5 of
    a file below the multipart threshold, else the MD5 of the MD5s of its `chunk`-byte
    parts and "-N" for N parts."""
    sha, parts, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while True:
            part, taken = _md5(), 0
            while taken < chunk and (block := f.read(min(CHUNK, chunk - taken))):
                sha.update(block)
                part.update(block)
                taken += len(block)
            if taken or not parts:  # an empty file is one empty PUT
                parts.append(part.digest())
                size += taken
            if taken < chunk:  # end of file
                break
    if size < MIN_PART_SIZE:  # one PUT: parts holds that one part
        return size, sha.hexdigest(), parts[0].hex()
    etag = _md5()
    for digest in parts:
        etag.update(digest)
    return size, sha.hexdigest(), f"{etag.hexdigest()}-{len(parts)}"


# One loader of botocore's JSON models (endpoints, the S3 model and its rule set, ~0.3 s of
# CPU to parse) for every client of the process: each block instance makes its own session.
_MODELS = create_loader()


class S3BackupStorage(BackupStorage):
    """Backups in an S3 bucket (or any S3-compatible store via endpoint_url).

    Example:
        ```python
        from prefect_dbbackup import S3BackupStorage, backup_server

        storage = S3BackupStorage.load("BLOCK_NAME")
        backup_server("local-pg", storage=storage)
        ```
    """

    _block_type_name = "S3 Backup Storage"
    _documentation_url = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/Welcome.html"
    _block_type_slug = "s3-backup-storage"
    _description = (
        "Stores backups in an S3 bucket: AWS, or MinIO/SeaweedFS/R2/... through endpoint_url."
    )

    bucket: str = Field(description="Bucket name.")
    prefix: str = Field(default="", description="Key prefix inside the bucket (no leading '/').")
    region: str | None = Field(default=None, description="Region, e.g. eu-central-1.")
    endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store; empty for AWS."
    )
    path_style: bool = Field(
        default=False, description="Path-style addressing (most self-hosted stores need it)."
    )
    credentials: AwsCredentials | None = Field(
        default=None,
        description="prefect-aws credentials; empty uses boto3's default chain (env, profile, "
        "instance role).",
    )
    storage_class: str | None = Field(
        default=None, description="e.g. STANDARD_IA, GLACIER_IR; empty for the bucket default."
    )
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        default=None, description="Server-side encryption on top of age (at-rest policy)."
    )
    kms_key_id: str | None = Field(default=None, description="KMS key for aws:kms.")
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = Field(
        default=None,
        description="Object lock on every stored object (the bucket must have object lock).",
    )
    object_lock_days: int | None = Field(
        default=None, ge=1, description="Days each object stays locked after upload."
    )
    checksum: Literal["SHA256", "CRC32", "none"] = Field(
        default="SHA256",
        description="Checksum sent with each upload; 'none' for stores that reject them.",
    )
    confirm_upload: Literal["etag", "read-back"] = Field(
        default="etag",
        description="How each stored object is confirmed before its manifest is written: "
        "'etag' compares the store's ETag with the MD5 computed here (read-back is used "
        "anyway with aws:kms or a non-MD5 ETag); 'read-back' downloads and hashes it.",
    )
    max_attempts: int = Field(default=5, ge=1, description="boto3 attempts per request.")
    max_concurrency: int = Field(default=8, ge=1, description="Parts uploaded in parallel.")
    connect_timeout: RequestSeconds = Field(
        default=10, description="Seconds to connect (at most an hour)."
    )
    read_timeout: RequestSeconds = Field(
        default=60, description="Seconds to wait for a reply (at most an hour)."
    )

    _client: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _lock_needs_days(self) -> S3BackupStorage:
        if (self.object_lock_mode is None) != (self.object_lock_days is None):
            raise ValueError("object_lock_mode and object_lock_days go together: set both or none")
        return self

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    @property
    def client(self) -> Any:
        """A boto3 S3 client (standard retry mode), made once per block instance."""
        if self._client is None:
            session = self.credentials.get_boto3_session() if self.credentials else boto3.Session()
            # botocore's service models, read once per process instead of once per session
            session._session.register_component("data_loader", _MODELS)
            when = "when_required" if self.checksum == "none" else "when_supported"
            config = Config(
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                s3={"addressing_style": "path" if self.path_style else "auto"},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                # parallel part uploads and parallel manifest reads (tasks/catalog.READERS)
                max_pool_connections=max(16, self.max_concurrency) + 4,
                request_checksum_calculation=when,
                response_checksum_validation="when_required",
            )
            self._client = session.client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        return self._client

    def _base(self) -> str:
        """The bucket prefix as the start of a key: '' or 'PREFIX/'."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    def _full(self, key: str) -> str:
        """The object key of a storage key (refused with UnsafeKey unless safe)."""
        full = self._base() + check_key(key)
        if len(full.encode()) > MAX_KEY:
            raise UnsafeKey(f"storage key {key!r} is too long for S3 with prefix {self.prefix!r}")
        return full

    def _missing(self, exc: BaseException) -> bool:
        """Whether exc (or what it wraps) is S3 saying there is no such object."""
        while exc is not None and not isinstance(exc, ClientError):
            exc = exc.__cause__ or exc.__context__
        return exc is not None and str(exc.response.get("Error", {}).get("Code")) in MISSING_CODES

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"no object s3://{self.bucket}/{self._full(key)}")

    def _put_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.checksum != "none":
            args["ChecksumAlgorithm"] = self.checksum
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.server_side_encryption:
            args["ServerSideEncryption"] = self.server_side_encryption
            if self.kms_key_id:
                args["SSEKMSKeyId"] = self.kms_key_id
        if self.object_lock_mode and self.object_lock_days:
            args["ObjectLockMode"] = self.object_lock_mode
            args["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=self.object_lock_days
            )
        return args

    def _error(self, exc: BaseException, action: str, key: str) -> DbBackupError:
        """An operator-facing error for a failed S3 call (secrets are never in boto3 text)."""
        where = f"s3://{self.bucket}/{self._base()}{key}"
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, (ClientError, BotoCoreError)):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, NoCredentialsError):
            return AuthError(
                f"cannot {action} {where}: no S3 credentials found; set credentials on the "
                "storage block or the worker's AWS environment"
            )
        if isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            if code in AUTH_CODES:
                return AuthError(
                    f"S3 refused to {action} {where} ({code}): check the access key, secret "
                    "and the bucket policy (docs/s3.md lists the permissions needed)"
                )
            if code == "NoSuchBucket":
                return ConfigError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}: "
                    "create it or fix the storage block"
                )
            return StorageError(f"cannot {action} {where}: {code} {cause}")
        if cause is None and (isinstance(exc, LOCAL_ERRORS) or is_disk_full(exc)):
            return StorageError(f"cannot {action} {where}: {exc}")  # local: no S3 advice
        advice = "Is the S3 endpoint reachable?"
        if action in ("upload", "write"):
            advice += " The upload is retried; a failed backup can simply be run again"
        return StorageError(f"cannot {action} {where}: {exc}. {advice}")

    def check(self) -> None:
        """The bucket exists and the credentials are accepted (one HEAD request)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "404":
                exc.response["Error"]["Code"] = "NoSuchBucket"
            elif code == "403":
                exc.response["Error"]["Code"] = "AccessDenied"
            raise self._error(exc, "access", "") from None
        except S3_ERRORS as exc:
            raise self._error(exc, "access", "") from None

    def clock(self) -> datetime:
        """The Date of the S3 server's answer to a one-key listing (to the second)."""
        try:
            response = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._base(), MaxKeys=1
            )
        except S3_ERRORS as exc:
            raise self._error(exc, "list", "") from None
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            return parsedate_to_datetime(date).astimezone(UTC)
        except (TypeError, ValueError):
            raise StorageError(
                f"{self.describe()} answered without a valid Date header ({str(date)[:40]!r}): "
                "cannot read its clock"
            ) from None

    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Upload (multipart above 8 MiB), then confirm the stored object (see confirm_upload)."""
        full = self._full(key)
        try:
            chunk = part_size(source.stat().st_size)
            size, digest, etag = file_digests(source, chunk)
        except OSError as exc:
            raise StorageError(f"cannot read {source}: {exc.strerror}") from None
        config = TransferConfig(
            multipart_threshold=MIN_PART_SIZE,
            multipart_chunksize=chunk,
            max_concurrency=self.max_concurrency,
        )
        if sha256 is not None and digest != sha256:
            raise spool_mismatch(source, sha256, digest)
        try:
            # leftovers of an earlier attempt at exactly this key
            self._abort_uploads(full, before=None, names={full.rsplit("/", 1)[-1]})
            # s3transfer aborts the multipart upload itself when a part fails
            self.client.upload_file(
                str(source), self.bucket, full, ExtraArgs=self._put_args(), Config=config
            )
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except S3_ERRORS as exc:
            raise self._error(exc, "upload", key) from None
        self._confirm(key, size, digest, etag, head["ContentLength"], head.get("ETag"))

    def put_bytes(self, key: str, data: bytes) -> None:
        """put_object, confirmed by the ETag it returns (or a read-back, see confirm_upload)."""
        try:
            reply = self.client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, **self._put_args()
            )
        except S3_ERRORS as exc:
            raise self._error(exc, "write", key) from None
        sha, md5 = hashlib.sha256(data).hexdigest(), _md5()
        md5.update(data)
        self._confirm(key, len(data), sha, md5.hexdigest(), len(data), reply.get("ETag"))

    def _confirm(
        self, key: str, size: int, sha256: str, etag: str, stored_size: int, stored_etag: Any
    ) -> None:
        """Compare the stored object with what was sent: size plus the ETag (an MD5 computed
        here) when it can be trusted to be one, else a read-back sha256. On a mismatch the
        object is deleted and a retryable StorageError raised."""
        stored = str(stored_etag or "").strip('"')
        if stored_size != size:
            problem = f"{stored_size} bytes stored, {size} sent"
        elif self.confirm_upload == "etag" and self._etag_is_md5(stored):
            problem = None if stored == etag else f"ETag {stored}, expected {etag}"
        else:
            got = self._stored_sha256(key)
            problem = None if got == sha256 else f"sha256 {got[:16]}..., sent {sha256[:16]}..."
        if problem is None:
            return
        with contextlib.suppress(DbBackupError):
            self.delete(key)
        raise StorageError(
            f"s3://{self.bucket}/{self._full(key)} is not what was sent ({problem}): the "
            "object was damaged on its way and has been deleted; no manifest was written. "
            "A retry can succeed; if this repeats, check what sits between worker and store "
            "(proxies, NICs) or set confirm_upload: read-back if the store's ETag is not an MD5"
        )

    def _etag_is_md5(self, etag: str) -> bool:
        """ETags are MD5s for plain and SSE-S3 (AES256) objects, not with SSE-KMS."""
        return self.server_side_encryption != "aws:kms" and MD5_ETAG.fullmatch(etag) is not None

    def _stored_sha256(self, key: str) -> str:
        """Read the stored object back and hash it."""
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
            for block in body.iter_chunks(CHUNK):
                digest.update(block)
        except S3_ERRORS as exc:
            if self._missing(exc):
                raise self._not_found(key) from None
            raise self._error(exc, "read back", key) from None
        return digest.hexdigest()

    def get_bytes(self, key: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
        return self._get(key, limit)[0]

    def _get(self, key: str, limit: int, **args: str) -> tuple[bytes, dict[str, Any]]:
        """The object's bytes and the GET's reply (its headers)."""
        full = self._full(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full, **args)
            with contextlib.closing(response["Body"]) as body:
                if response.get("ContentLength", 0) > limit:
                    raise too_large(key, response["ContentLength"], limit)
                data = body.read(limit + 1)
            if len(data) > limit:
                raise too_large(key, len(data), limit)
            return data, response
        except FlexibleChecksumError as exc:  # the store's SHA-256, checked by botocore
            raise self._read_fault(key, str(exc)) from None
        except S3_ERRORS as exc:
            if self._missing(exc):
                raise self._not_found(key) from None
            raise self._error(exc, "read", key) from None

    def get_checked(self, key: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
        """One GET, its bytes compared with the store's checksum of the object: a SHA-256
        stored by the upload (checksum: SHA256) or an MD5 ETag; with neither, a second
        GET must return the same bytes."""
        data, reply = self._get(key, limit, ChecksumMode="ENABLED")
        sha = reply.get("ChecksumSHA256")
        etag = str(reply.get("ETag") or "").strip('"')
        if len(data) != reply.get("ContentLength", len(data)):
            problem = f"{len(data)} bytes read, the store holds {reply['ContentLength']}"
        elif sha and "-" not in sha:
            got = base64.b64encode(hashlib.sha256(data).digest()).decode()
            problem = None if got == sha else f"sha256 {got}, the store's is {sha}"
        elif self._etag_is_md5(etag) and "-" not in etag:
            md5 = _md5()
            md5.update(data)
            got = md5.hexdigest()
            problem = None if got == etag else f"MD5 {got}, the store's ETag is {etag}"
        else:
            return super().get_checked(key, limit)
        if problem is not None:
            raise self._read_fault(key, problem)
        return data

    def _read_fault(self, key: str, problem: str) -> ReadFault:
        return ReadFault(
            f"s3://{self.bucket}/{self._full(key)} was damaged on its way here ({problem}): "
            "the stored object is not affected; check what sits between worker and store "
            "(proxies, NICs) and read again"
        )

    def _head(self, key: str) -> dict | None:
        """One HEAD of key: its metadata, or None when there is no such object."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except S3_ERRORS as exc:
            if self._missing(exc):
                return None
            raise self._error(exc, "check", key) from None

    def stored_size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def copy(self, source: str, target: str) -> None:
        """CopyObject (one request: objects up to 5 GiB, chunks and manifests), confirmed
        by size and the store's checksums of both objects (else by hashing both)."""
        full, copied = self._full(source), self._full(target)
        try:
            source_head = self.client.head_object(
                Bucket=self.bucket, Key=full, ChecksumMode="ENABLED"
            )
            self.client.copy_object(
                Bucket=self.bucket,
                Key=copied,
                CopySource={"Bucket": self.bucket, "Key": full},
                **self._put_args(),
            )
            target_head = self.client.head_object(
                Bucket=self.bucket, Key=copied, ChecksumMode="ENABLED"
            )
        except S3_ERRORS as exc:
            if self._missing(exc):
                raise self._not_found(source) from None
            raise self._error(exc, "copy", source) from None
        if self._same_object(source_head, target_head):
            return
        if self._stored_sha256(source) != self._stored_sha256(target):
            raise StorageError(
                f"the copy of s3://{self.bucket}/{full} at {copied} differs from it: the "
                "source is kept; try again"
            )

    def _same_object(self, one: dict[str, Any], two: dict[str, Any]) -> bool:
        """Whether two HEADs show the same size and the same MD5 ETag or SHA-256."""
        if one["ContentLength"] != two["ContentLength"]:
            return False
        etags = [str(h.get("ETag") or "").strip('"') for h in (one, two)]
        if all(self._etag_is_md5(e) and "-" not in e for e in etags):
            return etags[0] == etags[1]
        shas = [h.get("ChecksumSHA256") for h in (one, two)]
        return shas[0] is not None and shas[0] == shas[1]

    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        """Download to a private temp file in workdir (ciphertext only), then read it."""
        full = self._full(key)
        # unbuffered: nothing is left to flush at close, so a full disk fails once, here
        with tempfile.NamedTemporaryFile(dir=workdir, prefix="download-", buffering=0) as f:
            try:
                self.client.download_fileobj(self.bucket, full, f, Config=DOWNLOAD_CONFIG)
            except S3_ERRORS as exc:
                if self._missing(exc):
                    raise self._not_found(key) from None
                if is_disk_full(exc):
                    raise DiskFull(
                        f"the work dir {workdir} is full while downloading "
                        f"s3://{self.bucket}/{self._full(key)}: set DBBACKUP_WORK_DIR to a disk "
                        "with room for the stored backup"
                    ) from None
                raise self._error(exc, "download", key) from None
            f.seek(0)
            yield f  # type: ignore[misc]

    def list_keys(self, prefix: str = "") -> list[str]:
        """Objects whose names start with the prefix's whole segments (see BackupStorage);
        objects outside the key rules (written by other tools) are left out."""
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        prefix = list_prefix(prefix)
        strip = len(self._base())
        found: dict[str, datetime] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._base() + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    found[obj["Key"][strip:]] = obj["LastModified"]
        except S3_ERRORS as exc:
            raise self._error(exc, "list", prefix) from None
        return {k: t for k, t in found.items() if is_safe_key(k)}

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until date of a locked object still in force (only asked when the
        block sets object lock: one HEAD)."""
        if not self.object_lock_mode or (head := self._head(key)) is None:
            return None
        until = head.get("ObjectLockRetainUntilDate")
        return until if until is not None and until > datetime.now(UTC) else None

    def delete(self, key: str) -> None:
        """Delete an object; with object lock every version goes, or ObjectLocked is raised."""
        full = self._full(key)
        try:
            if not self.object_lock_mode:
                self.client.delete_object(Bucket=self.bucket, Key=full)
                return
            listing = self.client.list_object_versions(Bucket=self.bucket, Prefix=full)
            versions = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
            for version in (v for v in versions if v["Key"] == full):
                self._delete_version(key, version["VersionId"])
        except S3_ERRORS as exc:
            raise self._error(exc, "delete", key) from None

    def _delete_version(self, key: str, version_id: str) -> None:
        full = self._full(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=version_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "AccessDenied":
                raise
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=full, VersionId=version_id)
            except ClientError:
                raise self._error(exc, "delete", key) from None
            until = head.get("ObjectLockRetainUntilDate")
            if until is None:
                raise self._error(exc, "delete", key) from None
            raise ObjectLocked(
                f"s3://{self.bucket}/{full} is under object lock until {until:%Y-%m-%d %H:%M} UTC"
            ) from None

    def collect_garbage(self, prefix: str, before: datetime, names: Collection[str]) -> list[str]:
        """Abort incomplete multipart uploads of objects named in `names` under prefix
        started before `before`."""
        full = self._base() + list_prefix(prefix)
        try:
            return self._abort_uploads(full, before=before, names=names)
        except S3_ERRORS as exc:
            raise self._error(exc, "clean up incomplete uploads under", prefix) from None

    def _abort_uploads(
        self, full_prefix: str, before: datetime | None, names: Collection[str] | None = None
    ) -> list[str]:
        aborted = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=full_prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if before is not None and upload["Initiated"] >= before:
                    continue
                if names is not None and upload["Key"].rsplit("/", 1)[-1] not in names:
                    continue
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted.append(upload["Key"])
        return aborted
