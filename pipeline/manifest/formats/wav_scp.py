"""Kaldi `wav.scp` entries: a file path, or a decoder pipe (`<command> |`) read as the file it names.

Kaldi data dirs as the standard recipes write them name most recordings by a command whose output is
the audio: `flac -c -d -s a.flac |` (LibriSpeech), `sph2pipe -f wav -p -c 1 a.sph |` (WSJ,
Switchboard, Fisher, CALLHOME, TIMIT), `sox a.wav -t wav - remix 1 |`, `ffmpeg -i a.m4a -f wav - |`
(VoxCeleb). No command is ever run (no shell, no subprocess): the words are parsed with `shlex`, and a
command is accepted only where its output is the audio of the file it names as the pipeline reads
it anyway (decoded at its own rate, resampled to 16 kHz by `audio.resampler`), or one channel of it.
Then the entry is that file, with that channel (0-based, the private `schema.CHANNEL` column).

Anything else is an error row naming the recording, the command and why: an effect that changes the
audio (`speed`, `vol`, `trim`, `-t b:e` ranges), a conversion that loses something (`sph2pipe -u`),
an unknown program, pipes chained (`a | b |`), shell syntax (`;`, `>`, `$VAR`), stdin as input.

A relative file path is resolved as a plain entry's is (against `input.audio_root`, else the data
dir): Kaldi runs the command in the recipe's directory, so for relative paths there set
`input.audio_root` to it.
"""

from __future__ import annotations

import getopt
import os
import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """A `wav.scp` value read: the file to decode and its channel (0-based; None: the mix), or why it
    cannot be read (`error`). `whole`: the entry is the file with all its channels (a path, or a pipe
    that passes them all), so a side named elsewhere (`reco2file_and_channel`, an RTTM's channels)
    still picks one; else the entry is one channel (`channel`) or the mix (None) of the file."""

    path: str | None
    channel: int | None = None
    error: str | None = None
    whole: bool = True


class _Refused(Exception):
    """Why a pipe command is not read (its message goes into the error row)."""


def read_entry(rec: str, value: str, scp: str = "wav.scp") -> Entry:
    """`<value>` of `<rec> <value>` in `scp` -> the file and channel it is, or an error row's reason."""
    stripped = value.strip()
    if not stripped.endswith("|"):
        return Entry(stripped)
    command = stripped[:-1].strip()
    try:
        path, channel, whole = _pipe(command)
    except _Refused as why:
        return Entry(
            None,
            error=f"{scp}: {rec!r} is a pipe command ({stripped!r}) the pipeline does not read: {why}; "
            f"give a file path instead",
        )
    return Entry(path, channel, whole=whole)


# a pipe read: (the file, the channel picked or None, whether every channel passes through)
_Read = tuple[str, "int | None", bool]


def _pipe(command: str) -> _Read:
    words = _words(command)
    if not words:
        raise _Refused("it names no command")
    program = os.path.basename(words[0])
    read = _PROGRAMS.get(program)
    if read is None:
        known = ", ".join(sorted(_PROGRAMS))
        raise _Refused(f"it runs {program!r}, not one of the decoders read as the file they name ({known})")
    return read(words[1:])


def _words(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as e:  # an unclosed quote
        raise _Refused(f"its words do not parse ({e})") from None
    for w in words:
        if w and set(w) <= set("|"):
            raise _Refused("it chains several commands")
        if w and set(w) <= set("();<>&"):
            raise _Refused(f"it uses shell syntax ({w!r})")
        if "$" in w or "`" in w or w.startswith("~"):
            raise _Refused(f"{w!r} needs the shell to expand it")
    return words


def _one_file(operands: list[str], program: str) -> str:
    if len(operands) != 1:
        raise _Refused(f"{program} is given {len(operands)} files ({operands}), not one")
    if operands[0] == "-":
        raise _Refused(f"{program} reads its standard input")
    return operands[0]


def _options(words: list[str], program: str, short: str, long: list[str], gnu: bool = True):
    try:
        return (getopt.gnu_getopt if gnu else getopt.getopt)(words, short, long)
    except getopt.GetoptError as e:
        raise _Refused(f"{program}: {e} (not an option whose output the pipeline reproduces)") from None


# -- flac -------------------------------------------------------------------------------------------


def _flac(words: list[str]) -> _Read:
    """`flac -c -d -s <file>` (any order, bundled, long forms): the FLAC decoded to standard output."""
    opts, operands = _options(
        words, "flac", "cdsf", ["stdout", "decode", "silent", "totally-silent", "force"]
    )
    given = {o.lstrip("-") for o, _ in opts}
    if not given & {"d", "decode"}:
        raise _Refused("flac without -d encodes; it does not decode")
    if not given & {"c", "stdout"}:
        raise _Refused("flac without -c writes a file, not to the pipe")
    return _one_file(operands, "flac"), None, True


# -- sph2pipe ---------------------------------------------------------------------------------------

# sph2pipe's output headers (-f, by their first letters as it matches them): all carry the same samples
_SPH2PIPE_FORMATS = ("rif", "wav", "raw", "sph", "au", "aif", "mac")


def _sph2pipe(words: list[str]) -> _Read:
    """`sph2pipe [-f typ] [-p] [-c 1|2] <file>`: a SPHERE file's samples (a shorten-compressed one is
    refused when decoded: audio.py), all channels or one; -p converts mu-law to 16-bit PCM, exactly."""
    opts, operands = _options(words, "sph2pipe", "daupf:c:t:s:h:", [])
    channel = None
    for o, arg in opts:
        if o in ("-t", "-s"):
            # sph2pipe cuts [int(b * rate), int(e * rate)) samples of the file at its rate, and segments
            # count from that cut: the pipeline cuts on the 16 kHz grid after resampling the whole file
            raise _Refused(f"{o} {arg} selects a range of the file (put the range in segments)")
        if o in ("-u", "-a"):
            raise _Refused(
                f"{o} converts the samples to 8-bit {'mu-law' if o == '-u' else 'A-law'}, losing some"
            )
        if o == "-h":
            raise _Refused("-h reads a headerless file by another file's header")
        if o == "-f" and not arg.lower().startswith(_SPH2PIPE_FORMATS):
            raise _Refused(f"-f {arg} is not an output format sph2pipe knows")
        if o == "-c":
            if arg[:1] not in ("1", "2"):
                raise _Refused(f"-c {arg}: sph2pipe outputs channel 1 or 2")
            channel = int(arg[:1]) - 1
    if len(operands) == 2:
        raise _Refused(f"sph2pipe writes to the file {operands[1]!r}, not to the pipe")
    # `-c` on a mono file is ignored (sph2pipe's own rule, and the decoder's)
    return _one_file(operands, "sph2pipe"), channel, channel is None


# -- sox --------------------------------------------------------------------------------------------

_SOX_WAV = ("wav", "wavpcm")


def _sox(words: list[str]) -> _Read:
    """`sox [-t type] <file> -t wav [-r 16k] [-b 16] [-e signed-integer] [-c 1] - [remix N | remix - |
    channels 1 | rate [-q|-l|-m|-h|-v] 16k]...`: the file as WAV, its mix or channel N, at 16 kHz."""
    # sox parses options file by file, each run ending at its file (getopt's `+`): plain getopt does too
    short, long = "qSDRGt:r:c:b:e:", ["no-dither", "guard", "no-show-progress", "show-progress"]
    long += ["type=", "rate=", "channels=", "bits=", "encoding="]
    # -V takes its level glued on (`-V3`) or none, which getopt cannot say: drop it first
    rest = [w for w in words if not (w.startswith("-V") and w[2:].isdigit() or w == "-V")]
    files: list[tuple[list[tuple[str, str]], str]] = []
    while rest:
        opts, rest = _options(rest, "sox", short, long, gnu=False)
        if not rest:
            raise _Refused("sox names no output after its last options")
        files.append((opts, rest[0]))
        rest = rest[1:]
        if len(files) == 2:
            break
    if len(files) < 2:
        raise _Refused("sox names no output file")
    (in_opts, infile), (out_opts, outfile) = files
    if infile == "-":
        raise _Refused("sox reads its standard input")
    if outfile != "-":
        raise _Refused(
            f"sox is given more than one input file or writes to the file {outfile!r}, not to the pipe"
        )
    for o, arg in in_opts:
        if o in ("-r", "-c", "-b", "-e", "--rate", "--channels", "--bits", "--encoding"):
            raise _Refused(f"{o} {arg} before the input file overrides what its header says")
    channel: int | None = None
    mixed = False
    out_type = None
    for o, arg in out_opts:
        if o in ("-t", "--type"):
            out_type = arg.lower()
        elif o in ("-r", "--rate"):
            _sixteen_k(arg, f"sox {o} {arg}")
        elif o in ("-c", "--channels"):
            if arg != "1":
                raise _Refused(
                    f"{o} {arg} writes {arg} channels; the pipeline reads one (a channel or the mix)"
                )
            mixed = True
        elif o in ("-b", "--bits") and arg != "16":
            raise _Refused(f"{o} {arg} writes {arg}-bit samples")
        elif o in ("-e", "--encoding") and arg.lower() not in ("signed-integer", "signed"):
            raise _Refused(f"{o} {arg} writes {arg} samples")
    if out_type not in _SOX_WAV:
        raise _Refused(f"sox writes {out_type or 'no -t type'} to the pipe, not wav (what Kaldi reads)")
    effects = rest
    picked = False
    while effects:
        name, args, effects = effects[0], [], effects[1:]
        while effects and effects[0] not in _SOX_EFFECT_NAMES:
            args.append(effects.pop(0))
        if (name, args) in (("remix", ["-"]), ("channels", ["1"])):
            mixed = True  # all channels mixed to one: the mix the pipeline takes
            continue
        if name == "remix" and len(args) == 1 and args[0].isdigit() and int(args[0]) >= 1 and not picked:
            channel, picked = int(args[0]) - 1, True
            continue
        if name == "rate" and args and all(a in ("-q", "-l", "-m", "-h", "-v") for a in args[:-1]):
            _sixteen_k(args[-1], f"sox rate {' '.join(args)}")
            continue
        shown = " ".join([name, *args])
        raise _Refused(f"sox effect {shown!r} is not one whose output the pipeline reproduces")
    # a channel picked first stays picked: the mix of one channel is itself
    return infile, channel, not (picked or mixed)


# the effects sox knows (an effect's words run up to the next of these): enough to split a chain and
# name the one refused; any other name is refused with its arguments
_SOX_EFFECT_NAMES = frozenset(
    "allpass band bandpass bandreject bass bend biquad chorus channels compand contrast dcshift deemph "
    "delay dither divide downsample earwax echo echos equalizer fade fir firfit flanger gain highpass "
    "hilbert input ladspa loudness lowpass mcompand noiseprof noisered norm oops output overdrive pad "
    "phaser pitch rate remix repeat reverb reverse riaa silence sinc spectrogram speed splice stat stats "
    "stretch swap synth tempo treble tremolo trim upsample vad vol".split()
)


def _sixteen_k(value: str, what: str) -> None:
    """A rate sox or ffmpeg resamples to: only 16 kHz, the pipeline's own (with its own resampler)."""
    v = value.lower()
    try:
        hz = float(v[:-1]) * 1000 if v.endswith("k") else float(v)
    except ValueError:
        raise _Refused(f"{what}: {value!r} is not a sample rate") from None
    if hz != 16000:
        raise _Refused(
            f"{what} resamples to {hz:g} Hz, a step the pipeline does not take (it resamples the file "
            f"to 16 kHz itself)"
        )


# -- ffmpeg -----------------------------------------------------------------------------------------

_FFMPEG_FLAGS = {"-hide_banner", "-nostdin", "-nostats", "-y", "-n", "-vn", "-sn", "-dn"}
_FFMPEG_QUIET = {"-v", "-loglevel"}


def _ffmpeg(words: list[str]) -> _Read:
    """`ffmpeg [-v X] -i <file> -f wav [-acodec pcm_s16le] [-ar 16k] [-ac 1] -`: the file's first
    audio stream as WAV, its mix, at 16 kHz."""
    infile, out_format, mixed, k = None, None, False, 0
    while k < len(words):
        w = words[k]
        arg = words[k + 1] if k + 1 < len(words) else None
        if w in _FFMPEG_FLAGS:
            k += 1
            continue
        if w == "-" or w.startswith("pipe:"):
            if k != len(words) - 1:
                raise _Refused(f"ffmpeg words follow its output {w!r}")
            break
        if not w.startswith("-"):
            raise _Refused(f"ffmpeg writes to the file {w!r}, not to the pipe")
        if arg is None:
            raise _Refused(f"ffmpeg {w} has no value")
        if w in _FFMPEG_QUIET:
            pass
        elif w == "-i":
            if infile is not None:
                raise _Refused("ffmpeg is given more than one input")
            infile = arg
        elif infile is None:
            raise _Refused(f"ffmpeg {w} {arg} before -i is an input option the pipeline does not reproduce")
        elif w == "-f":
            out_format = arg
        elif w in ("-acodec", "-c:a", "-codec:a", "-c", "-codec") and arg != "pcm_s16le":
            raise _Refused(f"ffmpeg {w} {arg} encodes other than 16-bit PCM")
        elif w == "-ar":
            _sixteen_k(arg, f"ffmpeg -ar {arg}")
        elif w == "-ac":
            if arg != "1":
                raise _Refused(f"ffmpeg -ac {arg} writes {arg} channels; the pipeline reads one (the mix)")
            mixed = True
        elif w not in ("-acodec", "-c:a", "-codec:a", "-c", "-codec", "-ac"):
            raise _Refused(f"ffmpeg option {w} {arg} is not one whose output the pipeline reproduces")
        k += 2
    else:
        raise _Refused("ffmpeg does not write to the pipe (its output is not '-')")
    if infile is None:
        raise _Refused("ffmpeg has no -i input")
    if infile == "-" or infile.startswith("pipe:"):
        raise _Refused("ffmpeg reads its standard input")
    if out_format != "wav":
        raise _Refused(
            f"ffmpeg writes {out_format or 'no -f format'} to the pipe, not wav (what Kaldi reads)"
        )
    return infile, None, not mixed


_PROGRAMS = {"flac": _flac, "sph2pipe": _sph2pipe, "sox": _sox, "ffmpeg": _ffmpeg}
