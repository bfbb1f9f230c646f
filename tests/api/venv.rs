//! Python virtualenvs under `target/` for the tests that run a program we did not write (the
//! push receiver, a tus client): each installed from its pinned requirements file once, and
//! reused while that file is unchanged. Without Python, venv or PyPI those tests PANIC: a test
//! that skipped silently would prove nothing.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// A virtualenv named `name` (a directory of the target directory) with the packages of
/// `requirements` (relative to the crate), needed by `who` (for the failure messages).
pub struct Venv {
    name: &'static str,
    requirements: &'static str,
    who: &'static str,
    python: OnceLock<PathBuf>,
}

impl Venv {
    pub const fn new(name: &'static str, requirements: &'static str, who: &'static str) -> Self {
        Self {
            name,
            requirements,
            who,
            python: OnceLock::new(),
        }
    }

    /// The virtualenv's Python, the virtualenv made first if missing or stale.
    pub async fn python(&'static self) -> PathBuf {
        tokio::task::spawn_blocking(|| self.python.get_or_init(|| self.ensure()).clone())
            .await
            .expect("a test virtualenv")
    }

    /// Creates the virtualenv with the pinned requirements unless its stamp (a copy of the
    /// requirements it was made from) matches. A lock file keeps two test processes from
    /// installing into it at once; within one process `python` does.
    fn ensure(&self) -> PathBuf {
        let who = self.who;
        let requirements_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(self.requirements);
        let requirements = std::fs::read_to_string(&requirements_path)
            .unwrap_or_else(|e| panic!("{}: {e}", self.requirements));
        // CARGO_TARGET_TMPDIR is `<target>/tmp`, wherever CARGO_TARGET_DIR puts the target.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory");
        std::fs::create_dir_all(target).expect("the target directory");
        let venv = target.join(self.name);
        let python = venv.join("bin/python");
        let stamp = venv.join(".requirements");

        let lock = std::fs::File::create(target.join(format!("{}.lock", self.name)))
            .expect("venv lock file");
        lock.lock().expect("lock the venv");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) && python.exists() {
            return python;
        }
        eprintln!(
            "{who}: installing {} into {}",
            requirements_path.display(),
            venv.display()
        );
        match std::fs::remove_dir_all(&venv) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove the stale {}: {e}", venv.display()),
        }
        let system_python = std::env::var("PUSH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            std::process::Command::new(&system_python)
                .args(["-m", "venv"])
                .arg(&venv),
            &format!(
                "{who} need Python 3 with venv (`{system_python} -m venv`; PUSH_TEST_PYTHON \
                 names another interpreter)"
            ),
        );
        run(
            std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements_path),
            &format!(
                "{who} need their packages from PyPI (pip install -r {})",
                self.requirements
            ),
        );
        std::fs::write(&stamp, &requirements).expect("write the venv stamp");
        python
    }
}

fn run(command: &mut std::process::Command, need: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{need}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{need}: {command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
