"""What makes a forward pass reusable: the cache of :func:`gradood.features.extract_features`,
and the only code that touches its files.

**The key.** With ``cache_dir``, the result is stored as ``features-<key>.pt`` in that
directory. The key is a digest (:mod:`gradood.fingerprint`) of

- the model: its class, every parameter and buffer (bytes), submodule attributes, training
  flags and forward hooks;
- the dataset: its class, length and attributes, including the transform (described by its
  content, not its ``repr``: two ``Lambda`` transforms differ by their function's code and
  closure), and its data. A dataset that lists its files (``samples`` / ``imgs`` of
  torchvision's ``ImageFolder``, ``files`` of pytorch-ood's image datasets) is keyed by the
  path, size and modification time of every file (with ``hash_files=True``, also by the bytes
  of every file); one that holds its data (``TensorDataset``, CIFAR's ``data``) by those bytes.
  Any other dataset (a file list under another name, data made on the fly, a listed file that
  cannot be read) is keyed by the content of **every sample**, read once through the
  DataLoader (the transform runs, the model does not) before the cache is looked up. This
  costs one extra read of the data on each call (no forward pass), and is sound: nothing less
  than every sample determines the result. (Hashing during the extraction instead would save
  that read on a miss only: a hit must read every sample anyway, to check a recorded hash.)
- the head, the extra layers and their reduction, bf16 autocast, the device type, the torch
  version and ``key_extra`` (free material, e.g. a code version).

Any change of these gives a new key, so a stale result is never returned; the cache does not
see edits of the source code of a model's or a transform's methods (pass ``key_extra``), nor a
dataset class that lists files or holds arrays but reads something else. The cache is not
used, with a warning that says why, if an input cannot be described stably (an object whose
only description is a memory address) or the dataset is random: its transform holds one of
torchvision's random transforms (``Random*``, ``ColorJitter``, ``RandAugment``,
``AutoAugment``, ...), or the first, middle or last sample differs between two reads.

**Integrity.** Every cache file records a BLAKE2b checksum of its tensors, verified on every read: a
file changed on disk (a flipped bit) raises :class:`~gradood.cache.store.CorruptCacheError` (a
``CacheError``) naming it; ``recompute=True`` extracts again and replaces it, and so does
``on_corrupt`` (a callback, told first) where the file is found to be bad.

**Concurrency.** Processes sharing a ``cache_dir`` take turns per key: the extraction holds an
exclusive lock on ``features-<key>.lock`` (:func:`gradood.locking.exclusive_lock`, through
filelock: ``flock`` on Unix, where Linux maps it to a POSIX lock on NFS; ``msvcrt`` on
Windows). A second process waits, then finds the final file and reads it; both get the same
result and no file is left but the final one.

**Resuming.** The dataset is cut into chunks of ``chunk_size`` samples; each finished chunk is
written at once to ``features-<key>.chunks/``, and a later call skips the chunks that exist.
When all are there, they are assembled into the final file and removed. Every file is written
to a temporary file in the same directory and then renamed (``os.replace``), so no partial file
is ever visible under a final name. Only files with these names (and the lock) are created or
removed.
"""

from ..locking import exclusive_lock
from .cached import OnChunk, RunChunks, cached_pass
from .key import FORMAT_VERSION, CacheKey, Reading, cache_key, check_same_key
from .store import CacheError, CorruptCacheError, Store

__all__ = [
    "FORMAT_VERSION",
    "CacheError",
    "CacheKey",
    "CorruptCacheError",
    "OnChunk",
    "Reading",
    "RunChunks",
    "Store",
    "cache_key",
    "cached_pass",
    "check_same_key",
    "exclusive_lock",
]
