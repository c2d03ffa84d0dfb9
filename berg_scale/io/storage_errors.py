"""Storage, credential, endpoint and file errors, translated into one line with the fix.

botocore, aiobotocore, aiohttp, s3fs and the OS each raise their own exception types
for the same few problems (no credentials, wrong credentials, an endpoint that is down,
a missing bucket or file, a folder that cannot be written), usually several of them
chained together. Users need to know which of those problems it is and what to change,
not the 40 frames between them, so every command funnels such exceptions through
`translate_storage_error`: commands with context (the URL they were reading) use
`storage_errors(...)`, and the CLI's top-level handler applies it to anything that
escapes, as a last resort.

Classes are matched by name along the exception chain, so this module imports none of
those libraries and works with whichever of them raised.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any, Iterator
from urllib.parse import urlsplit

from berg_scale.errors import BergScaleError, StorageError

CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or storage.key/storage.secret"
ANONYMOUS_HINT = "a public bucket needs anonymous access (--anon, storage.anon: true)"

# The options of the command being run (set by the CLI): advice names a flag only where the
# command has it, so every fix a message gives can be typed as written. None: not known.
_command_flags: frozenset[str] | None = None


def set_command_flags(flags: frozenset[str] | None) -> None:
    global _command_flags
    _command_flags = flags


def _lacks(flag: str) -> bool:
    return _command_flags is not None and flag not in _command_flags


def _with_flag(flag: str, rest: str, separator: str = ", ") -> str:
    """`flag` + `rest`, or only `rest` when the running command has no such option."""
    return rest if _lacks(flag) else f"{flag}{separator}{rest}"

_MISSING_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_REJECTED_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
}
# Servers that answer without an error code still say it in words.
_REJECTED_CREDENTIAL_TEXTS = {
    "access key id you provided does not exist": "InvalidAccessKeyId",
    "signature we calculated does not match": "SignatureDoesNotMatch",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "Forbidden", "403"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_UNREACHABLE = {
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectTimeout", "ReadTimeoutError",
    "ConnectionClosedError", "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError",
    "ProxyConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
    "FSTimeoutError", "gaierror", "ServerTimeoutError",
}
# What the exception itself must be for its chain to be read as a storage problem.
_STORAGE_ROOTS = {"OSError", "BotoCoreError", "ClientError"}
_TLS = {"SSLError", "ClientSSLError", "ClientConnectorCertificateError", "SSLCertVerificationError"}

# errno -> what to do about it, for local files and folders.
_ERRNO_FIXES = {
    errno.ENOSPC: "no space left on the device: free space or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another location",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder, not a file: fix the path",
    errno.EEXIST: "it already exists: remove it or choose another path",
}


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and everything behind it (`__cause__`, `__context__`, Ray's `cause`), once each."""
    chain: list[BaseException] = []
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is seen for seen in chain):
            continue
        chain.append(item)
        for nxt in (item.__cause__, item.__context__, getattr(item, "cause", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return chain


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (or of what s3fs translated it from)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        if code:
            return str(code)
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return None


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _where(url: str | None) -> str:
    return f" for {url}" if url else ""


def _endpoint_of(options: Any, chain: list[BaseException]) -> str | None:
    if options is not None:
        try:
            endpoint = options.resolved_endpoint()
        except AttributeError:
            endpoint = None
        if endpoint:
            return str(endpoint)
    for item in chain:
        kwargs = getattr(item, "kwargs", None)
        if isinstance(kwargs, dict) and kwargs.get("endpoint_url"):
            # botocore reports the request URL; the endpoint is its scheme and host.
            parts = urlsplit(str(kwargs["endpoint_url"]))
            return f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(kwargs["endpoint_url"])
    return None


def endpoint_of_filesystem(fs: Any) -> str | None:
    """The endpoint an s3fs filesystem talks to (None for local ones and AWS defaults)."""
    client_kwargs = getattr(fs, "client_kwargs", None)
    if isinstance(client_kwargs, dict) and client_kwargs.get("endpoint_url"):
        return str(client_kwargs["endpoint_url"])
    return None


def _is_remote(url: str | None) -> bool:
    return bool(url) and "://" in str(url) and not str(url).startswith("file://")


def translate_storage_error(
    exc: BaseException,
    url: str | None = None,
    options: Any = None,
    what: str = "access",
    endpoint: str | None = None,
    anonymous_hint: str | None = None,
) -> StorageError | None:
    """A `StorageError` naming the problem and the fix, or None when `exc` is not one.

    `url` is what was being accessed and `options` the `StorageOptions` in use (or
    `endpoint`, the S3 endpoint URL), when the caller knows them; `what` is the verb for
    the generic case ("read", "write", ...); `anonymous_hint` ends credential messages
    (commands with their own anonymous-access rules say them there).
    """
    if anonymous_hint is None:
        anonymous_hint = f"a public bucket needs anonymous access ({_with_flag('--anon', 'storage.anon: true')})"
    if isinstance(exc, BergScaleError):
        return exc if isinstance(exc, StorageError) else None
    if not _names(exc) & _STORAGE_ROOTS:
        # A KeyError raised while handling a FileNotFoundError is a bug, not a missing file.
        return None
    chain = exception_chain(exc)
    names = set().union(*(_names(item) for item in chain))
    codes = {code for code in map(_error_code, chain) if code}
    codes |= {code for text, code in _REJECTED_CREDENTIAL_TEXTS.items()
              if any(text in str(item).lower() for item in chain)}
    if url and hasattr(options, "for_url"):
        options = options.for_url(url)  # the prefix's settings when one matches
    endpoint = endpoint or _endpoint_of(options, chain)
    at = f" at {endpoint}" if endpoint else ""
    where = _where(url)

    if names & _MISSING_CREDENTIALS:
        return StorageError(f"no S3 credentials found{where}: set {CREDENTIAL_VARIABLES}; {anonymous_hint}")
    rejected = codes & _REJECTED_CREDENTIAL_CODES
    if rejected:
        return StorageError(
            f"the S3 server{at} rejected the credentials{where} ({sorted(rejected)[0]}): "
            f"check {CREDENTIAL_VARIABLES} for this endpoint; {anonymous_hint}"
        )
    local_file = any(isinstance(item, OSError) and item.filename for item in chain)
    remote_denied = "PermissionError" in names and (
        "ClientError" in names or (_is_remote(url) and not local_file)
    )
    if codes & _DENIED_CODES or remote_denied:
        # A HEAD request's 403 has no body, so wrong credentials and missing permissions
        # look the same here: the fix names both.
        return StorageError(
            f"the S3 server{at} refused access{where} ({_detail(exc)}): check the credentials "
            f"in {CREDENTIAL_VARIABLES} and that they may access this bucket; {anonymous_hint}"
        )
    if codes & _MISSING_BUCKET_CODES:
        bucket = _bucket_of(url)
        named = f"bucket {bucket!r}" if bucket else "the bucket"
        return StorageError(f"{named} does not exist{at}{where}: create it or fix the URL")
    if names & _TLS:
        target = f"the S3 endpoint {endpoint}" if endpoint else "the S3 endpoint"
        return StorageError(
            f"TLS to {target} failed{where} ({_detail(exc)}): check the endpoint's scheme "
            "(http:// or https://) and the certificates (AWS_CA_BUNDLE)"
        )
    if names & _UNREACHABLE or (names & {"TimeoutError"} and _is_remote(url)):
        target = f"the S3 endpoint {endpoint}" if endpoint else "the S3 endpoint"
        return StorageError(
            f"cannot reach {target}{where} ({_detail(_deepest(chain, _UNREACHABLE) or exc)}): check "
            f"{_with_flag('--endpoint-url', 'storage.endpoint_url / AWS_ENDPOINT_URL', ' / ')} and that "
            "the server is running"
        )
    if "NoRegionError" in names:
        return StorageError(
            f"no S3 region is set{where}: "
            + ("set storage.region or AWS_DEFAULT_REGION" if _lacks("--region")
               else "pass --region, set storage.region or AWS_DEFAULT_REGION")
        )
    os_error = next((item for item in chain if isinstance(item, OSError)), None)
    if os_error is not None:
        return _os_error(os_error, url, what, endpoint)
    if "ClientError" in names or "BotoCoreError" in names:
        return StorageError(
            f"S3 request{where}{at} failed ({_detail(exc)}): check the URL and the server; "
            "run again if it was a passing outage"
        )
    return None


def _deepest(chain: list[BaseException], names: set[str]) -> BaseException | None:
    """The innermost exception of a kind: it carries the most specific message."""
    found = None
    for item in chain:
        if _names(item) & names:
            found = item
    return found


def _bucket_of(url: str | None) -> str | None:
    if not _is_remote(url):
        return None
    return str(url).split("://", 1)[1].split("/", 1)[0] or None


def _os_error(exc: OSError, url: str | None, what: str, endpoint: str | None) -> StorageError:
    filename = getattr(exc, "filename", None)
    name = str(filename) if filename else (url or "")
    subject = f"{name}: " if name else ""
    reason = exc.strerror or _detail(exc)
    if isinstance(exc, FileNotFoundError):
        shown = name or _detail(exc)
        return StorageError(f"{shown} does not exist: check the path (and the bucket/prefix for s3://)")
    if isinstance(exc, PermissionError):
        return StorageError(
            f"{subject}permission denied: fix the permissions or choose a location you can {what}"
        )
    fix = _ERRNO_FIXES.get(exc.errno or -1)
    if fix:
        return StorageError(f"cannot {what} {name or 'the file'}: {fix}")
    at = f" at {endpoint}" if endpoint and _is_remote(url) else ""
    return StorageError(
        f"cannot {what} {name or 'the file'}{at}: {reason}; check the path and that the storage is available"
    )


def underlying_storage_error(
    exc: BaseException, url: str | None = None, options: Any = None, what: str = "access"
) -> StorageError | None:
    """The translated raw cause of a `BergScaleError` that only quoted it tersely.

    Lower layers sometimes wrap a storage exception as "cannot list X: Forbidden"; the
    caller can swap that for the full diagnosis (which problem, which fix).
    """
    for item in exception_chain(exc)[1:]:
        if not isinstance(item, BergScaleError):
            return translate_storage_error(item, url, options, what)
    return None


@contextlib.contextmanager
def storage_errors(url: str | None = None, options: Any = None, what: str = "access") -> Iterator[None]:
    """Re-raise storage, credential, endpoint and file errors inside as one-line `StorageError`s."""
    try:
        yield
    except BergScaleError:
        raise
    except Exception as exc:  # noqa: BLE001 - only the translatable ones are replaced
        translated = translate_storage_error(exc, url, options, what)
        if translated is None:
            raise
        raise translated from exc
