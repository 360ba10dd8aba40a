"""Shared test fixtures: `virtual_mic`, a real PulseAudio server used as a microphone.

How a recording reaches the product through it: Debian's libportaudio2 (19.6) has no
PulseAudio host API, only ALSA and OSS. PortAudio's ALSA host API lists the ALSA PCMs,
among them `pulse` (defined by libasound2-plugins in alsa.conf.d/50-pulseaudio.conf) and
`default`, which the pulseaudio package's alsa.conf.d/99-pulse.conf points at `pulse` when
a PulseAudio server answers at the moment ALSA reads its configuration (a hook in
libasound2-plugins' libasound_module_conf_pulse.so). Both find the server through
PULSE_SERVER. So the chain is sounddevice -> PortAudio (ALSA) -> ALSA pulse plugin ->
libpulse -> this server -> its null sink's monitor, the default source. PortAudio reads
the device list once, when it initialises; edge_clapp.sources initialises it again before
it opens a microphone, which is why a server started after `import sounddevice` is seen.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SINK = "edge_clapp_vmic"
_START_TIMEOUT_S = 10.0


@dataclass
class VirtualMic:
    """A running PulseAudio server whose default source hears what `play` plays.

    env:  environment for PulseAudio clients (PULSE_SERVER and private state paths).
    rate: the sample rate of the sink, and so of the microphone, in Hz (mono).
    """

    env: dict[str, str]
    rate: int
    players: list[subprocess.Popen] = field(default_factory=list)

    def play(self, path: str | os.PathLike) -> subprocess.Popen:
        """Starts playing an audio file into the sink; returns the paplay process."""
        player = subprocess.Popen(
            ["paplay", f"--device={SINK}", os.fspath(path)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.players.append(player)
        return player


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def virtual_mic():
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if not shutil.which(tool)]
    if missing:
        pytest.skip(
            f"virtual microphone needs {', '.join(missing)}: install Debian's pulseaudio "
            "and pulseaudio-utils (scripts/setup.sh does)"
        )

    # A private home, runtime and state so that nothing of the user's is read or written;
    # a short path because a unix socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ec-pulse-"))
    for sub in ("home", "runtime", "state"):
        (root / sub).mkdir()
    socket = root / "runtime" / "native"
    config = root / "server.pa"
    config.write_text(
        f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n"
        # norewinds=1: without it the monitor stalls while idle and loses the start of
        # each file played into the sink.
        f"load-module module-null-sink sink_name={SINK} rate=16000 channels=1 "
        "format=float32le norewinds=1\n"
        f"set-default-sink {SINK}\n"
        f"set-default-source {SINK}.monitor\n"
    )
    (root / "client.conf").write_text("autospawn = no\n")
    private = {
        "HOME": str(root / "home"),
        "XDG_RUNTIME_DIR": str(root / "runtime"),
        "XDG_CONFIG_HOME": str(root / "home" / ".config"),
        "PULSE_RUNTIME_PATH": str(root / "runtime"),
        "PULSE_STATE_PATH": str(root / "state"),
        "PULSE_COOKIE": str(root / "cookie"),
        "PULSE_CLIENTCONFIG": str(root / "client.conf"),
    }
    client_env = {"PULSE_SERVER": f"unix:{socket}", **private}
    env = {**os.environ, **client_env}

    log_path = root / "server.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=-1"],
            env={**os.environ, **private},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    mic = VirtualMic(env=env, rate=16000)
    try:
        # Wait until the server answers; report its own log when it does not.
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            info = subprocess.run(["pactl", "info"], env=env, capture_output=True, text=True)
            if info.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the PulseAudio test server did not answer within {_START_TIMEOUT_S} s "
                    f"(exit status {server.poll()}); its log:\n{log_path.read_text()}"
                )
            time.sleep(0.05)

        # The product finds the server through the environment, as a user's would.
        with pytest.MonkeyPatch.context() as patch:
            for name, value in client_env.items():
                patch.setenv(name, value)
            yield mic
    finally:
        for player in mic.players:
            _stop(player)
        _stop(server)
        shutil.rmtree(root, ignore_errors=True)
