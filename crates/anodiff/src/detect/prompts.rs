//! Hierarchical text prompts (METHODS.md B.2): a global sentence ("A perfect {name}.") and a
//! detailed one naming the intact parts ("A {name} with intact {parts}."). The templates and the
//! per-category words are data (`assets/prompts.json`, embedded; `--prompts FILE` replaces it),
//! and the same [`PromptBook`] builds the prompt in training and in inference, so they cannot drift
//! apart. A category the book does not know uses the global template with its folder name and a
//! warning (its detailed sentence would need part words nobody wrote).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The embedded default book (MTD, BSData and the synthetic categories).
pub const DEFAULT_PROMPTS: &str = include_str!("../../assets/prompts.json");

/// The words of one category.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CategoryWords {
    /// What the object is called in a sentence ("magnetic tile" for the folder `mtd`).
    pub name: String,
    /// Its intact parts, as they follow "with intact".
    pub parts: String,
}

/// Which levels of the hierarchy a prompt holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PromptLevels {
    /// The global sentence followed by the detailed one (default).
    #[default]
    Both,
    /// Only "A perfect {name}." (the ablation, and the fallback for unknown categories).
    Global,
}

/// Prompt templates plus the words per category folder name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PromptBook {
    /// Template of the global sentence; `{name}` is replaced.
    pub global: String,
    /// Template of the detailed sentence; `{name}` and `{parts}` are replaced.
    pub detailed: String,
    /// Words per category folder name.
    pub categories: BTreeMap<String, CategoryWords>,
}

impl Default for PromptBook {
    fn default() -> Self {
        serde_json::from_str(DEFAULT_PROMPTS).expect("embedded prompts.json parses")
    }
}

impl PromptBook {
    /// Reads a book in the format of `assets/prompts.json`; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let book: Self = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not a prompt book: {e}", path.display())))?;
        if !book.global.contains("{name}") {
            return Err(Error::invalid(format!(
                "{}: the global template must contain {{name}}",
                path.display()
            )));
        }
        Ok(book)
    }

    /// Whether the book has words for `category`.
    pub fn knows(&self, category: &str) -> bool {
        self.categories.contains_key(category)
    }

    /// The prompt for a category folder name. Unknown categories get the global sentence with the
    /// folder name (underscores as spaces) and a logged warning.
    pub fn prompt(&self, category: &str, levels: PromptLevels) -> String {
        match self.categories.get(category) {
            Some(w) => {
                let global = self.global.replace("{name}", &w.name);
                match levels {
                    PromptLevels::Global => global,
                    PromptLevels::Both => {
                        let detailed = self
                            .detailed
                            .replace("{name}", &w.name)
                            .replace("{parts}", &w.parts);
                        format!("{global} {detailed}")
                    }
                }
            }
            None => {
                tracing::warn!(
                    "no prompt words for category `{category}`: using the global template only (add it to a prompt book, --prompts FILE)"
                );
                self.global
                    .replace("{name}", &category.replace(['_', '-'], " "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_book_builds_both_levels_and_falls_back() {
        let b = PromptBook::default();
        for c in ["mtd", "bsdata", "capsule", "metal_texture"] {
            assert!(b.knows(c), "{c}");
        }
        assert_eq!(
            b.prompt("mtd", PromptLevels::Both),
            "A perfect magnetic tile. A magnetic tile with intact smooth surface and even texture."
        );
        assert_eq!(
            b.prompt("capsule", PromptLevels::Global),
            "A perfect capsule."
        );
        assert_eq!(
            b.prompt("wood_board", PromptLevels::Both),
            "A perfect wood board."
        );
    }

    #[test]
    fn bad_book_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("anodiff-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.json");
        std::fs::write(&p, "{\"global\": 3}").unwrap();
        let e = PromptBook::load(&p).unwrap_err().to_string();
        assert!(e.contains("p.json"), "{e}");
        std::fs::write(&p, r#"{"global": "x", "detailed": "y", "categories": {}}"#).unwrap();
        let e = PromptBook::load(&p).unwrap_err().to_string();
        assert!(e.contains("{name}"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
