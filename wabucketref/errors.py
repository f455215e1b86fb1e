"""Errors whose message is fit to show a user as one line."""


class WaBucketError(Exception):
    """A failure the CLI reports as one line on stderr with exit status 1."""

    exit_code = 1


class UsageError(WaBucketError):
    """Bad input from the user: exit status 2."""

    exit_code = 2


class NotFoundError(WaBucketError):
    """An artifact, alias, bucket or path that does not exist."""


class IntegrityError(WaBucketError):
    """Bytes that do not match the manifest, or a manifest that is unsafe to use."""


class TransferError(WaBucketError):
    """A transfer that still failed after all retries."""
