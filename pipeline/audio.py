"""Pure audio functions: encoded audio -> float32 mono 16 kHz samples, validation, cuts, windows.

Contract: no Ray, no storage, no file system; bytes (or a seekable binary file object) in, arrays out.

- `decode` reads wav, flac, ogg/vorbis, ogg/opus and mp3 with soundfile (libsndfile; the format is
  detected from the content, not the name) and everything else FFmpeg demuxes and decodes with PyAV
  (its wheels bundle FFmpeg): mp4/m4a/mov, ADTS aac, webm/mkv, wma/asf, amr, flv, video files. From a
  file with several streams only the first audio stream is demuxed and decoded; video is never decoded.
- Both decoders yield float32 at the source rate with every channel; blocks (libsndfile) or frames
  (FFmpeg) are averaged over channels into one preallocated mono buffer, so a long multichannel file
  never exists as a whole interleaved array. Other rates are then resampled to 16 kHz by the chosen
  resampler (`RESAMPLERS`, `audio.resampler`): `soxr` (libsoxr, its HQ setting: the default, faster
  and far more accurate) or `torchaudio` (`torchaudio.functional.resample` at its defaults, the
  resampler the FunASR reference uses: the model input equals the reference's bit for bit). Either
  way a file gives the same numbers whichever decoder read it.
- Limits (`max_bytes`, `max_duration_s`) are checked before decoding: the size first, then the duration
  the header states; the decoded length is checked again as frames arrive, for headers that lie or
  state no duration (a FLAC written to a pipe says 0 samples: libsndfile reads it to its end).
- `channel` picks one channel of a multichannel file instead of the mix (one speaker per channel); a
  mono file is its own mix and ignores it; a channel the file lacks is an `AudioError`.
- `cut` takes a segment [start_s, end_s) of decoded 16 kHz samples on the sample grid.
- Every failure is an `AudioError` (a `ValueError`) whose message says what is wrong; the caller
  prefixes the stage and the file. Silence is valid audio.
- PyAV is imported only when a file needs FFmpeg: a node without it still reads everything libsndfile
  reads, and a container then fails as that row's `AudioError` naming the missing package.
- A file of which libsndfile reads 0 frames though bytes follow its header (a WAV whose writer never
  closed it, sizes still 0) goes to FFmpeg, which reads a WAV's data to the end of the file.
- An mp3 (MPEG audio) whose length libsndfile only estimates (no Xing/Info header: VBR from many
  encoders and streams) is read by libsndfile no further than the estimate; when that leaves audio
  bytes unread, FFmpeg decodes the file instead (where PyAV is installed and can decode it). So it
  does a WAV of a codec libsndfile lacks (G.726, AC-3, WMA; libsndfile: "Malformed 'fmt ' chunk"),
  an Ogg of one (Speex), and a chained Ogg (files joined end to end: libsndfile reads the first).
- A NIST SPHERE file (`.sph`) of uncompressed PCM or mu-law samples decodes; one whose samples are
  compressed (LDC's shorten: `sample_coding -s26 pcm,embedded-shorten-v2.00`) raises an error that
  says so and how to convert it (`sph2pipe -f wav -p`), never read as raw samples.
- A wav or mp3 cut short decodes to the part that is there (libsndfile's behaviour); truncated
  flac/ogg/opus data raises, and so does a container FFmpeg cannot open (an mp4 cut before its index)
  or a packet of a container it cannot decode; in a raw stream (mp3, ADTS AAC) such a frame is skipped.
"""

from __future__ import annotations

import functools
import io
import math
import re
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from .model import INPUT

if TYPE_CHECKING:
    import av

# The model's input contract (docs/model.md): its sample rate, receptive field and hop.
TARGET_SR = INPUT.sample_rate
MIN_SAMPLES = INPUT.receptive_field  # the shortest clip that gives a frame
# `audio.resampler` -> what it is, for the output's fingerprint (a resume never mixes two resamplers)
RESAMPLERS = {
    "soxr": "soxr.resample(quality=HQ)",
    "torchaudio": "torchaudio.functional.resample(sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99)",
}
DEFAULT_RESAMPLER = "soxr"
HOP = INPUT.hop  # samples between frames: the CNN's total stride

SOXR_BLOCK = 1 << 18  # longer input is resampled by libsoxr in blocks of this many samples
MIN_SOURCE_SR = 1_000  # below this a file is not audio we can use
# torchaudio's resampling kernel is about (new/g) x (orig/g) float32 weights, g = gcd(orig, 16000): 16 x 3 for
# 48 kHz, 160 x 441 for 44.1 kHz, but 16000 x 11127 (~700 MB) for an odd rate such as 11127 Hz.
MAX_KERNEL_ELEMENTS = 1 << 25  # 128 MiB of float32

SPHERE_HEADER_MAX = 1 << 16  # a NIST SPHERE header is read this far at most (they are 1024 bytes)
CUT_TOLERANCE_S = 0.1  # an end this far past the audio is clamped (rounding in manifests), not an error
BLOCK_FRAMES = 1 << 16  # libsndfile frames read per block from a multichannel file
# decoded audio may fall this short of an MP4 index's duration (encoder padding, edit lists)
INDEX_SLACK, INDEX_SLACK_S = 0.01, 0.1
# the mono buffer's first size: the stated duration, or this when none is stated; at most the limit or
# MAX_GUESS_S (a header can lie); it doubles when frames keep coming
FIRST_GUESS_S, MAX_GUESS_S = 60, 4 * 3600
SF_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count for a stream that never stated its length
# bytes left unread after libsndfile's last frame of an mp3 or Ogg that hold no audio: an ID3v1 tag,
# or any number starting with a tag that follows an mp3's last frame (APEv2, ID3v1, Lyrics3)
MP3_TAIL = 128
_MP3_END_TAGS = (b"APETAGEX", b"TAG", b"LYRICSBEGIN")
# libsndfile's open error for a WAV whose format tag (codec) it does not know, or a damaged one
_WAV_CODEC = "'fmt ' chunk"
# FFmpeg demuxers of raw streams, whose duration FFmpeg estimates from a bitrate
_RAW_STREAMS = frozenset({"aac", "mp3", "ac3", "eac3", "dts", "amr", "amrnb", "amrwb"})
# libsndfile's log of an mp3 whose Xing header states its length (else it estimates it from a bitrate)
_MP3_XING = re.compile(r"^\s*bitrate mode\s*:\s*variable\s*$", re.MULTILINE)
# the first packet of the Ogg streams libsndfile decodes: Vorbis, Opus, FLAC
_SNDFILE_OGG = (b"\x01vorbis", b"OpusHead", b"\x7fFLAC")
# libsndfile log lines that explain why a file yielded nothing
_LOG_PROBLEMS = ("error", "unexpected", "should be", "malformed", "lacks")
# libsndfile open errors that mean "not a format I read": FFmpeg gets the file instead ("unimplemented":
# an Ogg holding other streams than audio, a Theora video)
_NOT_SNDFILE = ("format not recognised", "unsupported", "unknown", "unimplemented")
# FFmpeg sample formats (packed names) -> scale to [-1, 1) float, as FFmpeg's own conversion does
_INT_SCALE = {"u8": 1 / 128, "s16": 1 / 32768, "s32": 2.0**-31, "s64": 2.0**-63}

Source = bytes | bytearray | memoryview | BinaryIO


class AudioError(ValueError):
    """Audio that cannot become model input; the message names the problem."""


@dataclass
class DecodedAudio:
    """A decoded clip: model-ready samples plus what the source file was."""

    samples: np.ndarray  # [N] float32 mono at 16 kHz, all finite
    sample_rate: int  # of the source file, Hz
    channels: int  # of the source file

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_SR


def decode(
    data: Source,
    name: str = "",
    *,
    max_duration_s: float | None = None,
    max_bytes: int | None = None,
    resampler: str = DEFAULT_RESAMPLER,
    channel: int | None = None,
) -> DecodedAudio:
    """Encoded audio -> validated 16 kHz mono float32. `name` is only used in messages.

    `data` is the file's bytes or a seekable binary file object holding the file from offset 0.
    `max_bytes` / `max_duration_s` reject a bigger / longer file before it is decoded (where the
    header states the duration; otherwise as soon as the decoded part passes the limit).
    `resampler` is a key of `RESAMPLERS`. `channel` (0-based): that channel alone instead of the mix.
    """
    f = _file(data)
    size = _size(f)
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise AudioError(
            f"file too big: {size / 2**20:.1f} MB ({size} bytes), over the limit of "
            f"{max_bytes / 2**20:g} MB (audio.max_file_mb)"
        )
    mono, sr, channels = _read(f, name, max_duration_s, channel)
    if len(mono) == 0:
        raise AudioError(f"no samples decoded (0 frames at {sr} Hz, {channels} channel(s))")
    if not np.isfinite(mono).all():
        raise AudioError("contains non-finite samples (NaN/Inf)")
    samples = to_mono_16k(mono, sr, resampler)
    validate(samples)
    return DecodedAudio(samples, sr, channels)


def to_mono_16k(x: np.ndarray, sample_rate: int, resampler: str = DEFAULT_RESAMPLER) -> np.ndarray:
    """[frames] or [frames, channels] float -> [N] float32 mono at 16 kHz, N = ceil(frames * 16000 / sr).

    Channels are averaged; other rates go through `resampler` (a key of `RESAMPLERS`): libsoxr at its
    HQ setting, or `torchaudio.functional.resample` with its defaults. Raises `AudioError` for a sample
    rate that cannot be resampled sanely.
    """
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r}; expected one of {', '.join(RESAMPLERS)}")
    mono = _downmix(x) if x.ndim == 2 else np.ascontiguousarray(x, np.float32)
    if sample_rate == TARGET_SR:
        return mono
    _check_rate(sample_rate, resampler)
    if resampler == "soxr":
        return _soxr(mono, sample_rate)
    # (Ray starts task workers with OMP_NUM_THREADS=1, so resampling stays on one core.)
    torch, _ = import_torch()
    with torch.inference_mode():
        return _resampler(sample_rate)(torch.from_numpy(mono)).numpy()


_torch_lock = threading.Lock()


def import_torch():
    """(torch, torchaudio), imported on first use: a decode worker needs them only for the torchaudio
    resampler or the VAD, and one that never does is spared the import (~1.5 s of CPU, ~250 MB).
    Every lazy import of torch in the decode stage goes through here: two threads of one worker
    importing it at once fail with a partially initialised module."""
    with _torch_lock:
        import torch
        import torchaudio

    return torch, torchaudio


def _soxr(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """libsoxr at its HQ setting (linear phase, 20-bit precision), one thread.

    soxr gives round(frames * 16000 / sr) samples where the model contract (and torchaudio) gives the
    ceiling: zeros after the input, which soxr assumes beyond the end anyway, make up the difference
    without changing any sample. A short clip is copied with the zeros appended and resampled in one
    call; a long one is streamed in blocks into the output, so no second copy of it is ever made."""
    n = math.ceil(len(mono) * TARGET_SR / sample_rate)
    # >= 2 output samples' worth of zeros: round() of the longer input reaches the ceiling
    zeros = 2 * (sample_rate // TARGET_SR + 1)
    if len(mono) <= SOXR_BLOCK:
        padded = np.zeros(len(mono) + zeros, np.float32)
        padded[: len(mono)] = mono
        return soxr.resample(padded, sample_rate, TARGET_SR, quality="HQ")[:n]
    stream = soxr.ResampleStream(sample_rate, TARGET_SR, 1, dtype="float32", quality="HQ")
    out = np.empty(n, np.float32)
    at = 0
    for start in range(0, len(mono) + SOXR_BLOCK, SOXR_BLOCK):
        last = start >= len(mono)
        chunk = np.zeros(zeros, np.float32) if last else mono[start : start + SOXR_BLOCK]
        y = stream.resample_chunk(chunk, last=last)[: n - at]
        out[at : at + len(y)] = y
        at += len(y)
        if last:
            break
    return out[:at]


@functools.lru_cache(maxsize=16)
def _resampler(sample_rate: int):
    """torchaudio's `Resample` to 16 kHz at the functional defaults: it builds the sinc kernel once per
    source rate, which `torchaudio.functional.resample` rebuilds on every call (half of the cost of a
    short clip); with the kernel in float32, as the functional builds it, the samples are identical."""
    torch, torchaudio = import_torch()
    return torchaudio.transforms.Resample(sample_rate, TARGET_SR, dtype=torch.float32)


def cut(samples: np.ndarray, start_s: float, end_s: float | None) -> np.ndarray:
    """The segment [start_s, end_s) of 16 kHz `samples`: samples[round(start_s * 16000) : round(end_s * 16000)].

    `end_s` None means to the end; an end up to `CUT_TOLERANCE_S` past the audio is clamped to it.
    Raises `AudioError` for negative or non-finite times, an empty or reversed range, a start at or
    past the end, an end further past the end, or a segment too short for the model (`validate`).
    """
    duration = len(samples) / TARGET_SR
    where = f"segment [{start_s}, {end_s}) s of audio lasting {duration:.3f} s"
    for t in (start_s, end_s):
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise AudioError(f"{where}: times must be finite and >= 0")
    if end_s is not None and end_s <= start_s:
        raise AudioError(f"{where}: the end is not after the start")
    a = round(start_s * TARGET_SR)
    if a >= len(samples):
        raise AudioError(f"{where}: starts at or past the end of the audio")
    b = len(samples) if end_s is None else round(end_s * TARGET_SR)
    if b > len(samples):
        if end_s - duration > CUT_TOLERANCE_S:
            raise AudioError(f"{where}: ends more than {CUT_TOLERANCE_S} s past the end of the audio")
        b = len(samples)
    segment = samples[a:b]
    validate(segment)
    return segment


def validate(samples: np.ndarray, min_samples: int = MIN_SAMPLES) -> None:
    """Raise `AudioError` unless `samples` ([N] at 16 kHz) are long enough for the model and finite."""
    n = len(samples)
    if n < min_samples:
        raise AudioError(
            f"too short: {n} samples at 16 kHz ({1000 * n / TARGET_SR:.1f} ms); "
            f"at least {min_samples} ({1000 * min_samples / TARGET_SR:.0f} ms) needed"
        )
    if not np.isfinite(samples).all():
        raise AudioError("contains non-finite samples (NaN/Inf)")


def chunk_bounds(
    num_samples: int, max_chunk_samples: int, min_samples: int = MIN_SAMPLES, hop: int = HOP
) -> list[tuple[int, int]]:
    """[start, end) windows, in order, for a clip too long to run at once; one window when it fits.

    Windows start at multiples of W = `max_chunk_samples` rounded down to a multiple of `hop`, and
    each but the last reaches `min_samples - hop` (80) samples past the next start, so it yields exactly
    W / hop frames that sit on the whole clip's frame grid: concatenating the windows' frames gives
    floor((N - 400) / 320) + 1 frames with frame i at 20 ms * i, as for the unsplit clip. A last
    window shorter than `min_samples` is merged into the one before it.
    """
    if num_samples <= max_chunk_samples:
        return [(0, num_samples)]
    w = max(hop, max_chunk_samples // hop * hop)
    overlap = min_samples - hop
    bounds = [(s, min(s + w + overlap, num_samples)) for s in range(0, num_samples, w)]
    # windows of one hop: the last two can both be cut short by the end, so merge until it is long enough
    while len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_samples:
        bounds.pop()
        bounds[-1] = (bounds[-1][0], num_samples)
    return bounds


# -- reading ---------------------------------------------------------------------------------------


def _file(data: Source) -> BinaryIO:
    """bytes or a seekable binary file object -> a file object positioned at 0."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data)
    if not (hasattr(data, "read") and hasattr(data, "seek") and data.seekable()):
        raise TypeError(f"decode needs bytes or a seekable binary file object, not {type(data).__name__}")
    data.seek(0)
    return data


def _size(f: BinaryIO) -> int:
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    return size


def _read(
    f: BinaryIO, name: str, max_duration_s: float | None, channel: int | None = None
) -> tuple[np.ndarray, int, int]:
    """file -> ([frames] float32 mono (or `channel`) at the source rate, source rate, source channels)."""
    _refuse_compressed_sphere(f)
    refused = None
    try:
        sound = sf.SoundFile(f)
    except sf.LibsndfileError as e:
        error = e.error_string.strip()
        if not any(s in error.lower() for s in _NOT_SNDFILE):
            refused = AudioError(f"corrupt or truncated audio: {error}")
            if _WAV_CODEC not in error and not _ogg_of_another_codec(f):
                raise refused from None
        sound = None  # not a format libsndfile reads: FFmpeg's turn
    except Exception as e:  # noqa: BLE001 - whatever the C decoder or its wrapper throws is bad input
        raise AudioError(f"cannot decode: {type(e).__name__}: {e}") from None
    if sound is None:
        if refused is not None:
            # a WAV or Ogg of a codec libsndfile lacks (G.726, AC-3, WMA, Speex...) or a corrupt one:
            # FFmpeg decodes the first; libsndfile's error stands for the second
            return _ffmpeg_or(f, name, max_duration_s, channel, refused)
        f.seek(0)
        return _read_ffmpeg(f, name, max_duration_s, channel)
    with sound:
        read = _read_sndfile(sound, max_duration_s, channel), sound.samplerate, sound.channels
        # libsndfile stops at the frame count it took from an mp3's first frame where no header
        # states it (VBR without a Xing header), and at the end of a chained Ogg's first link (files
        # joined end to end): unread bytes past the frames it gave are more audio. A WAV whose writer
        # never closed it states 0 bytes of data before its samples: 0 frames.
        at = f.tell()
        unread = _size_from(f, at)
        more = sound.format in ("MP3", "OGG") and unread > MP3_TAIL and not _starts_with(f, at, _MP3_END_TAGS)
        cut_short = more or (len(read[0]) == 0 and unread > 0)
    if cut_short:
        return _ffmpeg_or(f, name, max_duration_s, channel, read)
    return read


def _refuse_compressed_sphere(f: BinaryIO) -> None:
    """Raise `AudioError` for a NIST SPHERE file whose samples are compressed (LDC's shorten,
    `sample_coding -s26 pcm,embedded-shorten-v2.00`, or wavpack / shortpack): libsndfile refuses it
    and FFmpeg fails on it or decodes it by a decoder never checked against LDC's files; the samples
    must never be read as raw PCM. The message says how to get a file the pipeline reads."""
    f.seek(0)
    head = f.read(16)
    f.seek(0)
    if not head.startswith(b"NIST_1A") or not head[8:16].strip().isdigit():
        return
    size = min(int(head[8:16]), SPHERE_HEADER_MAX)
    header = f.read(size).decode("latin-1")
    f.seek(0)
    for line in header.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "sample_coding":
            coding = " ".join(words[2:])
            kind = next((c for c in ("shorten", "wavpack", "shortpack") if c in coding.lower()), None)
            if kind is not None:
                raise AudioError(
                    f"NIST SPHERE audio whose samples are {kind}-compressed (sample_coding {coding}), which "
                    f"the pipeline does not decode: convert it first, e.g. `sph2pipe -f wav -p in.sph "
                    f"out.wav` (LDC's sph2pipe decompresses it)"
                )
            return


def _starts_with(f: BinaryIO, at: int, prefixes: tuple[bytes, ...]) -> bool:
    f.seek(at)
    return f.read(max(map(len, prefixes))).startswith(prefixes)


def _ogg_of_another_codec(f: BinaryIO) -> bool:
    """Whether `f` is an Ogg whose first stream is not Vorbis, Opus or FLAC (Speex): libsndfile lacks it."""
    f.seek(0)
    page = f.read(27 + 255 + 8)  # the first page's header, its segment table, a packet's first bytes
    if len(page) < 28 or page[:4] != b"OggS":
        return False
    return not page[27 + page[26] :].startswith(_SNDFILE_OGG)


def _size_from(f: BinaryIO, at: int) -> int:
    """Bytes of `f` from `at` to its end (leaves `f` at its end)."""
    return f.seek(0, io.SEEK_END) - at


def _ffmpeg_or(
    f: BinaryIO,
    name: str,
    max_duration_s: float | None,
    channel: int | None,
    otherwise: tuple[np.ndarray, int, int] | AudioError,
) -> tuple[np.ndarray, int, int]:
    """A file libsndfile read only part of (an mp3, an unfinished WAV) or refused (a WAV's codec),
    decoded by FFmpeg; where FFmpeg is missing, cannot decode it (a chained Ogg whose links differ in
    rate) or finds no samples: what libsndfile read, or its error (`otherwise`), as before. Limits
    still apply."""
    try:
        _pyav()
        f.seek(0)
        read = _read_ffmpeg(f, name, max_duration_s, channel)
    except AudioError as e:
        if str(e).startswith(_TOO_LONG):  # the limit holds whichever decoder finds it
            raise
        read = None
    if read is None or len(read[0]) == 0:
        if isinstance(otherwise, AudioError):
            raise otherwise
        return otherwise
    return read


def _read_sndfile(
    sound: sf.SoundFile, max_duration_s: float | None, channel: int | None = None
) -> np.ndarray:
    """An open libsndfile file -> [frames] float32 mono, read in blocks into one buffer."""
    # a FLAC written to a pipe could not go back to state its length: libsndfile says SF_COUNT_MAX
    known = sound.frames < SF_UNKNOWN_FRAMES
    # an mp3 without a Xing header (ffmpeg writing VBR to a pipe): libsndfile's length is the size over
    # the first frame's bitrate, several times too long after a quiet start; the limit then applies to
    # what is decoded, and the estimate (at most the limit's worth) only sizes the buffer
    stated = known and not (sound.format == "MP3" and not _MP3_XING.search(sound.extra_info))
    if stated:
        _check_duration(sound.frames / sound.samplerate, max_duration_s, "as its header states")
    if sound.channels > 1:
        _check_channel(channel, sound.channels)
    if stated:
        size = sound.frames
    elif known:
        size = min(sound.frames, math.ceil(sound.samplerate * (max_duration_s or MAX_GUESS_S)) + BLOCK_FRAMES)
    else:
        size = math.ceil(sound.samplerate * min(FIRST_GUESS_S, max_duration_s or MAX_GUESS_S))
    mono = np.empty(size, np.float32)
    try:
        if sound.channels == 1 and stated:
            n = len(sound.read(out=mono))  # straight into the buffer
        else:
            block = np.empty((BLOCK_FRAMES, sound.channels), np.float32)
            n = 0
            while n < len(mono) or not stated:
                got = _readf(sound, block[: len(mono) - n] if stated else block, first=n == 0)
                if got == 0:
                    break
                if n + got > len(mono):  # a length nobody stated outgrew the guess: double the buffer
                    grown = np.empty(max(n + got, 2 * len(mono)), np.float32)
                    grown[:n] = mono[:n]
                    mono = grown
                _downmix_into(block[:got], mono[n : n + got], channel)
                n += got
                if not stated:
                    _check_duration(n / sound.samplerate, max_duration_s, "decoded so far")
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        raise AudioError(f"corrupt or truncated audio: {e.error_string.strip()}") from None
    except Exception as e:  # noqa: BLE001
        raise AudioError(f"cannot decode: {type(e).__name__}: {e}") from None
    if n == 0:
        problems = [ln.strip() for ln in sound.extra_info.splitlines() if _is_problem(ln)]
        if problems:
            raise AudioError(f"corrupt or truncated audio: no samples decoded ({'; '.join(problems)})")
    return mono[:n]


def _pyav():
    """The `av` module, imported on first use: wav/flac/ogg/mp3 never need it, and a node without PyAV
    (a slim image, a GPU machine without a package index) must still read those."""
    try:
        import av
    except ImportError as e:
        raise AudioError(
            f"this file needs FFmpeg (not wav/flac/ogg/mp3, which libsndfile reads) and PyAV is not "
            f"installed on this node: pip install av ({e})"
        ) from None
    return av


# libsndfile's frame reader through soundfile's C binding (None where soundfile has no such binding)
_SF_READF = getattr(getattr(sf, "_snd", None), "sf_readf_float", None)


def _readf(sound: sf.SoundFile, out: np.ndarray, first: bool) -> int:
    """Read up to len(out) frames into `out` ([frames, channels] float32, C-contiguous); -> frames
    read. After the `first` block, the same call soundfile's `read` makes without the tell() and
    seek() it wraps around every read to track its position: libsndfile's seek in FLAC re-decodes
    from a frame boundary, ~20 % of the decoding time of a 44.1 kHz stereo FLAC read in 64 k-frame
    blocks. The first block goes through `read`, so a file whose seek fails (a FLAC cut inside its
    header) is refused with the same message as before."""
    if first or _SF_READF is None:
        return len(sound.read(out=out))
    got = _SF_READF(sound._file, sf._ffi.cast("float *", out.ctypes.data), len(out))
    error = sf._snd.sf_error(sound._file)
    if error:
        raise sf.LibsndfileError(error)
    return got


def _read_ffmpeg(
    f: BinaryIO, name: str, max_duration_s: float | None, channel: int | None = None
) -> tuple[np.ndarray, int, int]:
    """A file libsndfile does not read -> its first audio stream as ([frames] float32 mono, rate, channels)."""
    av = _pyav()
    try:
        # tags in a legacy 8-bit encoding must not stop the audio
        container = av.open(f, mode="r", metadata_errors="replace")
    except av.FFmpegError as e:
        ext = PurePosixPath(name).suffix.lower()
        which = f" {ext!r}" if ext else ""
        raise AudioError(
            f"unsupported or unrecognised audio format{which}, or a corrupt file: neither libsndfile "
            f"nor FFmpeg can open it (FFmpeg: {_ffmpeg_reason(e)})"
        ) from None
    with container:
        stream = _audio_stream(container)
        header_s = _stated_duration(container, stream)
        # a raw stream (ADTS AAC, mp3, AC-3) states no duration: FFmpeg's is its size over the bitrate of
        # its first frames, several times too long after a quiet start; only the buffer's size uses it
        if header_s is not None and container.format.name not in _RAW_STREAMS:
            _check_duration(header_s, max_duration_s, "as its header states")
        buffer = _MonoBuffer(
            min(header_s or FIRST_GUESS_S, max_duration_s or MAX_GUESS_S, MAX_GUESS_S), channel
        )
        # a raw stream (mp3 files joined end to end, junk between frames) goes on at the next frame
        # after one it cannot decode, as the ffmpeg CLI does; a container's bad packet is an error
        raw = container.format.name in _RAW_STREAMS
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    if not raw:
                        raise
                    continue
                for frame in frames:
                    buffer.add(frame)
                    _check_duration(buffer.duration_s, max_duration_s, "decoded so far")
        except av.FFmpegError as e:
            raise AudioError(
                f"corrupt or truncated audio: FFmpeg stopped at {buffer.duration_s:.2f} s "
                f"({_ffmpeg_reason(e)})"
            ) from None
        except (AudioError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever the decoder or its wrapper throws is bad input
            raise AudioError(f"cannot decode: {type(e).__name__}: {e}") from None
        _check_complete(container, header_s, buffer.duration_s)
        return buffer.samples(), buffer.rate or (stream.sample_rate or 0), buffer.channels or stream.channels


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    """The first audio stream; every other stream is discarded at the demuxer (never decoded)."""
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams})
        held = f"only {'/'.join(kinds)} streams" if kinds else "no streams at all"
        raise AudioError(f"no audio stream: the file holds {held}")
    stream = container.streams.audio[0]
    # decoding only ever asks for this stream's packets; discarding the rest (AVDISCARD_ALL) also
    # spares the demuxer from handing them over. (`Stream.discard` is missing in some PyAV versions.)
    for other in container.streams:
        if other.index != stream.index and hasattr(other, "discard"):
            other.discard = type(other.discard).all
    return stream


def _stated_duration(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> float | None:
    """The audio stream's duration as the container states it (an estimate for raw ADTS/mp3), in s."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / _pyav().time_base
    return None


def _check_complete(container: av.container.InputContainer, stated_s: float | None, decoded_s: float) -> None:
    """MP4/MOV index every sample: a file cut inside another stream's data ends early without an error."""
    if stated_s is None or "mp4" not in container.format.name.split(","):
        return
    if decoded_s < stated_s * (1 - INDEX_SLACK) - INDEX_SLACK_S:
        raise AudioError(
            f"corrupt or truncated audio: decoded {decoded_s:.2f} s of the {stated_s:.2f} s its index lists"
        )


class _MonoBuffer:
    """FFmpeg frames, downmixed one by one into a preallocated float32 mono buffer that grows if needed."""

    def __init__(self, guess_s: float, channel: int | None = None) -> None:
        self.guess_s, self.channel = guess_s, channel
        self.rate = 0
        self.channels = 0
        self.n = 0
        self.buf = np.empty(0, np.float32)

    @property
    def duration_s(self) -> float:
        return self.n / self.rate if self.rate else 0.0

    def add(self, frame: av.AudioFrame) -> None:
        x = _frame_samples(frame)  # [samples, channels] float32
        if not self.rate:
            self.rate, self.channels = frame.sample_rate, x.shape[1]
            # a little over the stated duration: a container's duration rounds, AAC pads its last frame
            self.buf = np.empty(math.ceil(self.rate * (self.guess_s + 0.5)), np.float32)
        elif (frame.sample_rate, x.shape[1]) != (self.rate, self.channels):
            raise AudioError(
                f"the audio stream changes from {self.rate} Hz x {self.channels} channel(s) to "
                f"{frame.sample_rate} Hz x {x.shape[1]} at {self.duration_s:.2f} s"
            )
        end = self.n + len(x)
        if end > len(self.buf):
            grown = np.empty(max(end, 2 * len(self.buf)), np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        _downmix_into(x, self.buf[self.n : end], self.channel)
        self.n = end

    def samples(self) -> np.ndarray:
        return self.buf[: self.n]


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """An FFmpeg audio frame -> [samples, channels] float32 at the frame's rate (a view where possible)."""
    a = frame.to_ndarray()  # planar: [channels, samples]; packed: [1, samples * channels]
    fmt = frame.format
    x = a.T if fmt.is_planar else a.reshape(-1, frame.layout.nb_channels)
    kind = fmt.packed.name
    if kind == "flt":
        return x
    if kind == "dbl":
        return x.astype(np.float32)
    if kind not in _INT_SCALE:
        raise AudioError(f"unsupported FFmpeg sample format {fmt.name!r}")
    y = x.astype(np.float32)
    if kind == "u8":
        y -= np.float32(128)
    y *= np.float32(_INT_SCALE[kind])
    return y


def _ffmpeg_reason(e: av.FFmpegError) -> str:
    return e.strerror or type(e).__name__


_TOO_LONG = "too long: "


def _check_duration(seconds: float, max_duration_s: float | None, how: str) -> None:
    if max_duration_s is not None and seconds > max_duration_s:
        raise AudioError(
            f"{_TOO_LONG}{seconds:.1f} s {how}, over the limit of {max_duration_s:g} s (audio.max_duration_s)"
        )


def _is_problem(log_line: str) -> bool:
    """A libsndfile log line that reports damage (e.g. "data : 61812 (should be 1)")."""
    low = log_line.lower()
    return any(word in low for word in _LOG_PROBLEMS)


def _downmix(x: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames] float32, the mean over channels (no copy for mono float32)."""
    if x.shape[1] == 1:
        return np.ascontiguousarray(x[:, 0], np.float32)
    return _downmix_into(x, np.empty(len(x), np.float32))


def _downmix_into(x: np.ndarray, out: np.ndarray, channel: int | None = None) -> np.ndarray:
    """[frames, channels] -> `out` ([frames] float32): the mean over channels, or `channel` alone
    (a mono file is its own mix), written in place."""
    if channel is not None and x.shape[1] > 1:
        _check_channel(channel, x.shape[1])
        out[:] = x[:, channel]
        return out
    # a running sum over channels: same result as x.mean(axis=1), but ~10x faster for few channels,
    # and the same numbers whether a file arrives whole or block by block
    out[:] = x[:, 0]
    for c in range(1, x.shape[1]):
        out += x[:, c]
    if x.shape[1] > 1:
        out /= np.float32(x.shape[1])
    return out


def _check_channel(channel: int | None, channels: int) -> None:
    if channel is not None and not 0 <= channel < channels:
        raise AudioError(f"no channel {channel + 1} (counting from 1): the file has {channels} channels")


def _check_rate(sample_rate: int, resampler: str) -> None:
    """Raise `AudioError` for a source rate too low to be audio or (for torchaudio, whose kernel grows
    with the rates' ratio) too odd to resample in sane memory."""
    g = math.gcd(sample_rate, TARGET_SR)
    kernel = (sample_rate // g) * (TARGET_SR // g) if resampler == "torchaudio" else 0
    if sample_rate < MIN_SOURCE_SR or kernel > MAX_KERNEL_ELEMENTS:
        raise AudioError(f"unsupported sample rate {sample_rate} Hz: cannot resample it to 16 kHz sanely")
