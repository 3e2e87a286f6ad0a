"""`stepline serve` with TLS flags, as an operator starts it, and the CLI's client commands and a
worker reaching it with STEPLINE_TLS_* (real processes, certificates made by the test)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.certs import make_certs
from tests.e2e.test_cli import LISTENING, REPO, Process, _env, sent_run_id, stepline_env


def test_a_tls_server_from_flags_serves_the_cli_and_a_worker(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    server = Process(
        [sys.executable, "-m", "stepline_server", "serve", "--address", "127.0.0.1:0",
         "--database-url", f"sqlite:///{tmp_path / 'tls.db'}", "--http-address", "",
         "--tls-cert", certs.server_cert, "--tls-key", certs.server_key],
        cwd=tmp_path, env=_env(STEPLINE_SHUTDOWN_GRACE_SECONDS="1"))
    worker: Process | None = None
    try:
        url = server.wait_for_line(LISTENING).removeprefix(LISTENING)
        assert url.startswith("https://127.0.0.1:"), url
        trusting = {"STEPLINE_TLS_CA": certs.ca}
        worker = Process([sys.executable, "-m", "stepline", "worker",
                          "tests.e2e.apps.cli_app:app", "--url", url], cwd=REPO,
                         env=_env(**trusting))
        worker.wait_for_line("connected to")

        sent = stepline_env(trusting, "send", "test/cli.greet", '{"name": "Tls"}', url=url)
        run_id = sent_run_id(sent)
        shown = stepline_env(trusting, "run", run_id, "--json", url=url)
        assert shown.returncode == 0, shown.stderr

        # The system's roots do not know the test CA: one readable line, exit status 1.
        refused = stepline_env({}, "runs", url=url)
        assert refused.returncode == 1
        assert refused.stderr.startswith("stepline runs: cannot reach a Stepline server at "
                                         "127.0.0.1:"), refused.stderr
        assert "TLS handshake failed (CERTIFICATE_VERIFY_FAILED" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        missing = stepline_env({"STEPLINE_TLS_CA": str(tmp_path / "none.pem")}, "runs", url=url)
        assert missing.returncode == 2 and "tls CA: cannot read" in missing.stderr
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
