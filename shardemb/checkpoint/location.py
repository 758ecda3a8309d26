"""Where a checkpoint lives: a local folder (fsync, atomic rename) or an fsspec URL."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass

from shardemb._files import atomic_write, fsync
from shardemb.checkpoint.format import FORMAT, MANIFEST, RETIRING, STAGING, maybe_kill
from shardemb.errors import CheckpointError, InvalidConfigError

#: The only top-level entries of a checkpoint folder: all that ``save`` may delete.
LAYOUT = frozenset({"zarr.json", MANIFEST, f"{MANIFEST}.tmp", "shards"})


def io_error(path: str, what: str, err: OSError) -> CheckpointError:
    """The :class:`CheckpointError` for an I/O failure (permissions, disk full, symlink
    loop...) at ``path``: not damage, so not :class:`CheckpointCorruptError`. Raise it
    ``from err``."""
    detail = err.strerror or str(err) or type(err).__name__
    return CheckpointError(
        f"Checkpoint {path!r}: {what}: I/O error ({type(err).__name__}: {detail})."
    )


@dataclass(frozen=True, slots=True)
class Location:
    """Where a checkpoint (or a manager's root) lives; picklable, sent to shards."""

    url: str
    """The path as given (absolute for local paths)."""
    local: str | None
    """The local folder, or ``None`` for other filesystems."""
    protocol: str
    """fsspec protocol (``"file"``, ``"memory"``, ``"s3"``...)."""

    @classmethod
    def of(cls, path: str) -> Location:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise InvalidConfigError(
                f"`path` must be a non-empty folder path or URL. Received: path={path!r}"
            )
        path = os.fspath(path)
        if "://" not in path:
            return cls(os.path.abspath(path), os.path.abspath(path), "file")
        protocol = path.split("://", 1)[0]
        if protocol in ("file", "local"):
            local = os.path.abspath(path.split("://", 1)[1])
            return cls(local, local, "file")
        return cls(path.rstrip("/"), None, protocol)

    def check_backend(self, backend: str) -> None:
        if self.protocol == "memory" and backend != "inprocess":
            raise InvalidConfigError(
                "memory:// filesystems live in one process: use them with backend='inprocess'"
                f" only. Received: path={self.url!r}, backend={backend!r}"
            )

    # -- paths --------------------------------------------------------------------------
    def child(self, name: str) -> str:
        return os.path.join(self.local, name) if self.local else f"{self.url}/{name}"

    def file(self, name: str) -> str:
        return os.path.join(self.local, *name.split("/"))

    def sibling(self, pattern: str) -> Location:
        """The location beside this one named ``pattern.format(<this one's name>)``."""
        if self.local:
            parent, base = os.path.split(self.local)
            path = os.path.join(parent, pattern.format(base))
            return Location(path, path, "file")
        parent, _, base = self.url.rpartition("/")
        return Location(f"{parent}/{pattern.format(base)}", None, self.protocol)

    def _fs(self):
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url)
        return fs, root.rstrip("/")

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import FsspecStore, LocalStore

        if self.local:
            return LocalStore(self.local, read_only=read_only)
        return FsspecStore.from_url(self.url, read_only=read_only)

    # -- queries ------------------------------------------------------------------------
    def exists(self) -> bool:
        if self.local:
            return os.path.isdir(self.local)
        fs, root = self._fs()
        return fs.exists(root)

    def has(self, name: str) -> bool:
        if self.local:
            return os.path.exists(self.file(name))
        fs, root = self._fs()
        return fs.exists(f"{root}/{name}")

    def read(self, name: str) -> bytes | None:
        """The bytes of file ``name``, ``None`` if it is missing; other I/O failures raise
        :class:`CheckpointError` (see :func:`io_error`)."""
        try:
            if self.local:
                with open(self.file(name), "rb") as f:
                    return f.read()
            fs, root = self._fs()
            return fs.cat_file(f"{root}/{name}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            raise io_error(self.url, f"cannot read {name!r}", err) from err

    def listdir(self) -> list[str]:
        if self.local:
            return os.listdir(self.local) if os.path.isdir(self.local) else []
        fs, root = self._fs()
        if not fs.exists(root):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]

    def sizes(self, prefix: str) -> dict[str, int]:
        """``{path relative to prefix: size}`` of every file under ``prefix``."""
        if self.local:
            top = self.file(prefix) if prefix else self.local
            out = {}
            for folder, _, names in os.walk(top):
                rel = os.path.relpath(folder, top).replace(os.sep, "/")
                for n in names:
                    key = n if rel == "." else f"{rel}/{n}"
                    out[key] = os.path.getsize(os.path.join(folder, n))
            return out
        fs, root = self._fs()
        top = f"{root}/{prefix}" if prefix else root
        if not fs.exists(top):
            return {}
        top = fs._strip_protocol(top).rstrip("/")
        found = fs.find(top, detail=True)
        return {p[len(top) :].lstrip("/"): info["size"] for p, info in found.items()}

    # -- changes ------------------------------------------------------------------------
    def prepare_save(self) -> Location:
        """Where a save to this location writes: here, made empty (:meth:`prepare_empty`),
        unless a committed checkpoint is here. Then beside it (``.<name>.shardemb-new``,
        emptied), and the one here stays whole until :meth:`replace_with` swaps the new one
        in: a save cut short, or a shard killed meanwhile, never loses it."""
        if MANIFEST in self._checked_names():
            self.sibling(RETIRING).discard()  # left by a swap cut short: superseded now
            staging = self.sibling(STAGING)
            staging.prepare_empty()
            return staging
        self.prepare_empty()
        return self

    def discard(self) -> None:
        """Remove what is here if it is a provable shardemb checkpoint (manifest first);
        anything else is refused and left untouched."""
        if self._checked_names():
            self.uncommit()
            self.remove()

    def prepare_empty(self) -> None:
        """Make the folder exist and be empty. Only a provable shardemb checkpoint there (its
        manifest of shardemb's format or its root ``zarr.json`` with the
        ``shardemb_checkpoint`` attribute, and nothing beyond the checkpoint layout) is
        deleted, its manifest first; anything else is refused and left untouched."""
        self.discard()
        if self.local:
            try:
                os.makedirs(self.local, exist_ok=True)
                fsync(os.path.dirname(self.local), directory=True)
            except OSError as err:
                raise io_error(self.url, "cannot create the folder", err) from err

    def _checked_names(self) -> list[str]:
        """The entries here; raises :class:`CheckpointError` (nothing changed) unless this
        is nothing, an empty folder or a provable shardemb checkpoint."""
        if self.local and os.path.islink(self.local) and not os.path.exists(self.local):
            raise CheckpointError(
                f"Refusing to save into {self.url!r}: it is a symlink that leads nowhere "
                "(broken, or a symlink loop)."
            )
        if self.local and os.path.exists(self.local) and not os.path.isdir(self.local):
            raise CheckpointError(f"Refusing to save into {self.url!r}: it is a file.")
        try:
            names = self.listdir()
        except OSError as err:
            raise io_error(self.url, "cannot list the folder", err) from err
        reason = self._not_a_checkpoint(names) if names else None
        if reason:
            raise CheckpointError(
                f"Refusing to save into {self.url!r}: {reason}; nothing was changed."
            )
        return names

    def _not_a_checkpoint(self, names: list[str]) -> str | None:
        """Why the non-empty folder holding ``names`` is not provably a shardemb
        checkpoint, or ``None`` when it is one (committed or interrupted)."""
        extra = sorted(set(names) - LAYOUT)
        if extra:
            return (
                f"it holds files that are not part of a shardemb checkpoint ({extra[:5]}"
                f"{', ...' if len(extra) > 5 else ''})"
            )
        if "shards" in names and self.local and not os.path.isdir(self.file("shards")):
            return "its 'shards' is not a folder"
        marks = {
            MANIFEST: lambda d: d.get("format") == FORMAT,
            "zarr.json": lambda d: (
                isinstance(d.get("attributes"), dict) and "shardemb_checkpoint" in d["attributes"]
            ),
        }
        found = [n for n in marks if n in names]
        if not found:
            return f"it has no {MANIFEST} or zarr.json of a shardemb checkpoint ({sorted(names)})"
        for name in found:
            raw = self.read(name)
            try:
                doc = json.loads(raw) if raw is not None else None
            except (ValueError, UnicodeDecodeError):
                doc = None
            if not isinstance(doc, dict) or not marks[name](doc):
                return f"its {name} is not one of a shardemb checkpoint"
        return None

    def commit(self, name: str, data: bytes, kill_at: str | None) -> None:
        """Write ``name`` atomically: temporary file, fsync, rename, fsync the folder."""
        tmp = f"{name}.tmp"
        if self.local:
            atomic_write(
                self.file(name),
                data,
                tmp=self.file(tmp),
                before_rename=lambda: maybe_kill("manifest_tmp", kill_at),
            )
            return
        fs, root = self._fs()
        fs.pipe_file(f"{root}/{tmp}", data)
        maybe_kill("manifest_tmp", kill_at)
        fs.mv(f"{root}/{tmp}", f"{root}/{name}")

    def replace_with(self, new: Location, kill_at: str | None) -> None:
        """Make the committed checkpoint ``new`` (from :meth:`prepare_save`) the one here,
        then remove the old one. A local folder swaps with it in one atomic step (Linux's
        ``renameat2`` exchange); without one, the old one moves aside
        (``.<name>.shardemb-old``) and the new one is renamed in; other filesystems copy it
        in, manifest last. A crash between those steps leaves the new one committed beside
        (:func:`~shardemb.checkpoint.read_manifest` names it)."""
        if self.local:
            if not _exchange(new.local, self.local):
                old = self.sibling(RETIRING)
                old.remove()
                os.rename(self.local, old.local)
                os.rename(new.local, self.local)
                new = old
            fsync(os.path.dirname(self.local), directory=True)
        else:
            self.uncommit()
            self.remove()
            fs, root = self._fs()
            src = new._fs()[1]
            for key in sorted(set(new.sizes("")) - {MANIFEST}):
                fs.copy(f"{src}/{key}", f"{root}/{key}")
            self.commit(MANIFEST, new.read(MANIFEST), None)
        maybe_kill("after_replace", kill_at)
        new.uncommit()  # the old checkpoint, now beside: it stops being one, then goes
        new.remove()

    def uncommit(self) -> None:
        """Remove the manifest (durably): the folder stops being a checkpoint."""
        if self.local:
            try:
                os.remove(self.file(MANIFEST))
            except FileNotFoundError:
                return
            fsync(self.local, directory=True)
        elif self.has(MANIFEST):
            fs, root = self._fs()
            fs.rm_file(f"{root}/{MANIFEST}")

    def remove(self) -> None:
        if self.local:
            import shutil

            shutil.rmtree(self.local, ignore_errors=True)
        elif self.exists():
            fs, root = self._fs()
            fs.rm(root, recursive=True)

    def fsync_tree(self, prefix: str = "", files: bool = True) -> None:
        """fsync files (optionally) and folders under ``prefix``, deepest first, and the
        folders above it (local disks only: other filesystems have no fsync)."""
        if not self.local:
            return
        top = self.file(prefix) if prefix else self.local
        for folder, _, names in os.walk(top, topdown=False):
            if files:
                for n in names:
                    fsync(os.path.join(folder, n))
            fsync(folder, directory=True)
        while prefix:
            prefix = prefix.rpartition("/")[0]
            fsync(self.file(prefix) if prefix else self.local, directory=True)


def _exchange(a: str, b: str) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step (``renameat2`` with
    ``RENAME_EXCHANGE``); ``False`` where the system or the filesystem cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)
