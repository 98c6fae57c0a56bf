//! `A+B[+…]`: a mixture of anomaly sources, each draw taken from one of them chosen uniformly —
//! e.g. `fewshot-real+dir:GEN`, half the anomalous samples real few-shot defects and half
//! generated pairs (the comparison "do generated defects add to the real ones?").

use super::{AnomalyPair, AnomalySource};
use crate::error::Result;
use rand::rngs::StdRng;
use rand::Rng;

/// Several sources drawn from uniformly.
pub struct MixSource {
    name: String,
    parts: Vec<Box<dyn AnomalySource>>,
}

impl MixSource {
    /// A mixture of `parts` (at least one) named `name`.
    pub fn new(name: &str, parts: Vec<Box<dyn AnomalySource>>) -> Self {
        Self {
            name: name.to_string(),
            parts,
        }
    }
}

impl AnomalySource for MixSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair> {
        let i = rng.random_range(0..self.parts.len());
        self.parts[i].sample(rng)
    }
}

/// Splits `a+b+dir:x+y` into its parts: a `+` starts a new part only when what follows is a
/// source name or `dir:`, so paths may contain `+`.
pub fn split_mix(spec: &str, names: &[&str]) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for piece in spec.split('+') {
        let starts = names.contains(&piece) || piece.starts_with("dir:");
        match parts.last_mut() {
            Some(last) if !starts => {
                last.push('+');
                last.push_str(piece);
            }
            _ => parts.push(piece.to_string()),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that always returns a 1×1 image of one grey level.
    struct Constant(String, u8);
    impl AnomalySource for Constant {
        fn name(&self) -> &str {
            &self.0
        }
        fn sample(&mut self, _rng: &mut StdRng) -> Result<AnomalyPair> {
            Ok(AnomalyPair {
                image: image::RgbImage::from_pixel(1, 1, image::Rgb([self.1; 3])),
                mask: image::GrayImage::from_pixel(1, 1, image::Luma([255])),
            })
        }
    }

    #[test]
    fn draws_each_part_about_equally_and_reproducibly() {
        use rand::SeedableRng;
        let mut m = MixSource::new(
            "a+b",
            vec![
                Box::new(Constant("a".into(), 10)),
                Box::new(Constant("b".into(), 200)),
            ],
        );
        let draw = |m: &mut MixSource| -> Vec<u8> {
            let mut rng = StdRng::seed_from_u64(7);
            (0..1000)
                .map(|_| m.sample(&mut rng).unwrap().image.get_pixel(0, 0)[0])
                .collect()
        };
        let a = draw(&mut m);
        assert_eq!(a, draw(&mut m));
        let from_a = a.iter().filter(|&&v| v == 10).count();
        assert!(
            (430..570).contains(&from_a),
            "{from_a} of 1000 from the first part"
        );
        assert_eq!(m.name(), "a+b");
    }

    #[test]
    fn splits_on_source_boundaries_only() {
        let names = ["fewshot-real", "cutpaste"];
        assert_eq!(
            split_mix("fewshot-real+dir:/a+b/gen", &names),
            vec!["fewshot-real", "dir:/a+b/gen"]
        );
        assert_eq!(
            split_mix("dir:x+cutpaste", &names),
            vec!["dir:x", "cutpaste"]
        );
        assert_eq!(split_mix("cutpaste", &names), vec!["cutpaste"]);
    }
}
