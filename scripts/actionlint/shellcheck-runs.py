"""Runs shellcheck on every `run:` block of the workflow files given (bash, as the workflows'
default shell); `${{ ... }}` expressions become a plain word first. Exit 1 on any finding."""
import re
import subprocess
import sys

import yaml

failed = 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    for job_name, job in (doc.get("jobs") or {}).items():
        for i, step in enumerate(job.get("steps") or []):
            script = step.get("run")
            if not script:
                continue
            shell = step.get("shell") or (job.get("defaults", {}).get("run", {}).get("shell")) \
                or (doc.get("defaults", {}).get("run", {}).get("shell")) or "bash"
            if not shell.startswith("bash"):
                continue
            text = re.sub(r"\$\{\{.*?\}\}", "GHA_EXPRESSION", script)
            # GitHub runs bash with -e and pipefail.
            text = "#!/usr/bin/env bash\nset -eo pipefail\n" + text
            r = subprocess.run(["shellcheck", "-s", "bash", "-"], input=text, text=True,
                               capture_output=True)
            if r.returncode != 0:
                failed += 1
                name = step.get("name", f"step {i + 1}")
                print(f"{path}: job {job_name}, step {name!r}:\n{r.stdout}{r.stderr}")
print(f"shellcheck: run blocks of {len(sys.argv) - 1} workflow file(s), {failed} with findings")
sys.exit(1 if failed else 0)
