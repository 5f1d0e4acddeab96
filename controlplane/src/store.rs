//! The resource store: a watched directory of YAML files (the embedded default).
//!
//! Every file is split into its `---` documents, which travel to proxies as they were written.
//! A directory that fails to compile is refused as a whole — every diagnostic is logged and kept
//! for `status()` — and the last good set keeps being served: a typo never reaches a proxy.

use std::path::{Path, PathBuf};

use ringmesh_api::proto::Document;

/// One accepted set of resources.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    /// Documents in file order, with `file:line` sources.
    pub documents: Vec<Document>,
}

/// The directory, its last good set, and the last refusal.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    fingerprint: Vec<(PathBuf, u64)>,
    /// The last set that compiled.
    pub current: ResourceSet,
    /// Every diagnostic of the last refused load, if the newest files were refused.
    pub last_error: Option<String>,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read(f)
                    .map(|b| ringmesh_api::hash_table::hash_bytes(&b))
                    .unwrap_or(0),
            )
        })
        .collect()
}

impl DirStore {
    /// Opens `dir`; fails when the directory cannot be read or its files do not compile.
    pub fn open(dir: &Path) -> Result<DirStore, String> {
        if !dir.is_dir() {
            return Err(format!("--config-dir {}: not a readable directory", dir.display()));
        }
        let mut store = DirStore {
            dir: dir.to_path_buf(),
            fingerprint: Vec::new(),
            current: ResourceSet::default(),
            last_error: None,
        };
        match store.reload() {
            Ok(_) => Ok(store),
            Err(e) => Err(e),
        }
    }

    /// Re-reads the directory if any file changed. `Ok(true)`: a new set was accepted;
    /// `Ok(false)`: nothing changed; `Err`: the new files were refused (the old set stays).
    pub fn refresh(&mut self) -> Result<bool, String> {
        let files = yaml_files(&self.dir);
        if fingerprint(&files) == self.fingerprint {
            return Ok(false);
        }
        self.reload().map(|_| true)
    }

    fn reload(&mut self) -> Result<(), String> {
        let files = yaml_files(&self.dir);
        self.fingerprint = fingerprint(&files);
        if let Err(diags) = ringmesh_api::compile_files(&files, 0) {
            let msg = diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
            self.last_error = Some(msg.clone());
            return Err(msg);
        }
        let mut documents = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            for (line, yaml) in ringmesh_api::documents(&text) {
                documents.push(Document {
                    source: format!("{}:{line}", f.display()),
                    yaml,
                });
            }
        }
        self.current = ResourceSet { documents };
        self.last_error = None;
        Ok(())
    }
}
