"""The tokenizer's files: a checked unpickling of ``tokenizer.pkl`` and a save that never replaces a tokenizer."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from revjax.replace import temp_dir
from revjax.tokenizer.vocab import TOKEN_BYTES_FILE, TOKENIZER_FILE, TokenizerError


class _EncodingState:
    """Stands in for ``tiktoken.Encoding`` while unpickling, so tiktoken never acts on an unchecked state.

    A self-contained encoding pickles its vocabulary as a dict; tiktoken pickles an encoding of its registry
    (``cl100k_base`` …) as just the name, which it would resolve by downloading. Only the dict form is accepted.
    """

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, str):
            raise TokenizerError(
                f"the tokenizer pickle names tiktoken's registry encoding {state!r}, which tiktoken would fetch from "
                "the network, instead of holding its vocabulary; only a self-contained tiktoken.Encoding is accepted."
            )
        self.state = state

    def encoding(self) -> tiktoken.Encoding:
        return tiktoken.Encoding(**self.state)


class _EncodingUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``tiktoken.core.Encoding`` (as :class:`_EncodingState`), so foreign pickles
    cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise TokenizerError(
            f"tokenizer pickle references {module}.{name}, but only a pickled tiktoken.Encoding is accepted."
        )


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_encoding(directory: str | os.PathLike[str]) -> tiktoken.Encoding:
    """Read ``tokenizer.pkl`` (a pickled ``tiktoken.Encoding``) from ``directory``, resolving nothing else."""
    path = Path(directory) / TOKENIZER_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(
            f"no tokenizer found at {path}; train one first or point to the folder holding {TOKENIZER_FILE}."
        ) from None
    try:
        obj = _EncodingUnpickler(io.BytesIO(data)).load()
        if isinstance(obj, _EncodingState):
            obj = obj.encoding()
    except TokenizerError as err:
        raise TokenizerError(f"{path}: {err}") from None
    except Exception as err:
        raise TokenizerError(
            f"{path} is not a readable pickle ({type(err).__name__}: {err}); re-save or retrain the tokenizer."
        ) from err
    if not isinstance(obj, tiktoken.Encoding):
        raise TokenizerError(
            f"{path} holds a pickled {type(obj).__name__}, not a tiktoken.Encoding; "
            "use a tokenizer.pkl written by revjax or onanchat."
        )
    return obj


def free_folder(directory: str | os.PathLike[str]) -> Path:
    """``directory`` as an absolute path, after checking it holds no tokenizer (:class:`TokenizerError`)."""
    out = Path(directory).expanduser().absolute()
    existing = [n for n in (TOKENIZER_FILE, TOKEN_BYTES_FILE) if (out / n).exists() or (out / n).is_symlink()]
    if existing:
        raise TokenizerError(f"{out} already holds a tokenizer ({existing[0]}), which revjax never replaces since "
                             "checkpoints may use it; save the new one into another folder")
    return out


def write_files(out: Path, encoding: tiktoken.Encoding, token_bytes: np.ndarray) -> None:
    """Write ``tokenizer.pkl`` and ``token_bytes.npy`` into ``out`` as one unit (see :meth:`Tokenizer.save`)."""
    buf = io.BytesIO()
    np.save(buf, token_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, f".{out.name}.tmp-")  # the folder's mode is what mkdir gives, the files' what open does
    try:
        _write_synced(tmp / TOKEN_BYTES_FILE, buf.getvalue())
        _write_synced(tmp / TOKENIZER_FILE, pickle.dumps(encoding))
        try:
            os.rename(tmp, out)  # the whole folder appears at once; replaces nothing but an empty folder
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        for name in (TOKEN_BYTES_FILE, TOKENIZER_FILE):
            os.link(tmp / name, out / name)
    except FileExistsError:
        raise TokenizerError(f"another process saved a tokenizer into {out} meanwhile; revjax never replaces "
                             "one, so use that one or save into another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
