//! `crust show`: any image file, or a whole directory, as JSON.

use std::path::Path;

use prost::Message;
use serde_json::{json, Value};

use super::container::{read_payload, ImageError, Kind, TaskPackFile};
use super::messages::{Digests, Inventory, LazyStats, PsTree, SharedObject, Stats, Task};

fn decode<M: Message + Default + serde::Serialize>(
    path: &Path,
    payload: &[u8],
) -> Result<Value, ImageError> {
    let msg = M::decode(payload).map_err(|e| ImageError::Bad {
        path: path.to_path_buf(),
        what: format!("cannot decode: {e}"),
    })?;
    render(path, &msg)
}

fn render<M: serde::Serialize>(path: &Path, msg: &M) -> Result<Value, ImageError> {
    serde_json::to_value(msg).map_err(|e| ImageError::Bad {
        path: path.to_path_buf(),
        what: format!("cannot render: {e}"),
    })
}

/// One image file as JSON: its header fields and its message.
pub fn show_file(path: &Path) -> Result<Value, ImageError> {
    let (header, payload) = read_payload(path)?;
    let body = match header.kind {
        Kind::Inventory => decode::<Inventory>(path, &payload)?,
        Kind::PsTree => decode::<PsTree>(path, &payload)?,
        Kind::Task => decode::<Task>(path, &payload)?,
        Kind::Stats => decode::<Stats>(path, &payload)?,
        Kind::Digests => decode::<Digests>(path, &payload)?,
        Kind::LazyStats => decode::<LazyStats>(path, &payload)?,
        Kind::Shared => decode::<SharedObject>(path, &payload)?,
        Kind::Tasks => {
            // The index, then each task image it names, in order.
            let pack = TaskPackFile::open(path)?;
            let mut tasks = Vec::new();
            for t in &pack.index().tasks {
                let task = render(path, &pack.read(t.pid)?)?;
                tasks.push(json!({ "pid": t.pid, "task": task }));
            }
            json!({ "index": pack.index(), "tasks": tasks })
        }
        Kind::Pages => {
            json!({ "data_bytes": header.payload_len, "pages": header.payload_len / 4096 })
        }
    };
    Ok(json!({ "kind": header.kind.name(), "version": header.version, "message": body }))
}

/// A file, or every `*.img` in a directory keyed by file name.
pub fn show(path: &Path) -> Result<Value, ImageError> {
    if !path.is_dir() {
        return show_file(path);
    }
    let rd = std::fs::read_dir(path).map_err(|e| ImageError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut names: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(ImageError::Bad {
            path: path.to_path_buf(),
            what: "is a directory holding no image files".into(),
        });
    }
    let mut out = serde_json::Map::new();
    for p in names {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(name, show_file(&p)?);
    }
    Ok(Value::Object(out))
}
