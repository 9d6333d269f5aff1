//! Prints each file's outcome under the default options: `FILE<TAB>ok WxH` or
//! `FILE<TAB>REASON<TAB>DETAIL`. Used to review the robustness table:
//! `cargo run -p geoloc-imaging --example outcomes -- DIR/manifest.csv`.
use geoloc_imaging::{prepare, DecodeOptions, Geometry, Greyscale, PrepareOptions, Views};
use std::path::Path;

fn main() {
    let manifest = std::env::args()
        .nth(1)
        .expect("usage: outcomes MANIFEST.csv");
    let root = Path::new(&manifest).parent().unwrap().to_owned();
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let opts = PrepareOptions {
        decode: DecodeOptions {
            greyscale: if std::env::args().any(|a| a == "--convert") {
                Greyscale::Convert
            } else {
                Greyscale::Reject
            },
            ..Default::default()
        },
        geometry: Geometry::ResizeCrop {
            resize: 224,
            crop: 224,
        },
        views: Views::Centre,
        dct_scaling: true,
    };
    for line in text.lines().skip(1) {
        let file = line.split(',').next().unwrap();
        let bytes = std::fs::read(root.join(file)).unwrap();
        let t = std::time::Instant::now();
        let r = prepare(&bytes, &opts, 0);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(p) => println!(
                "{file}\tok\t{}x{} o{} s{} {ms:.1}ms",
                p.info.source_width,
                p.info.source_height,
                p.info.orientation.exif_value(),
                p.info.dct_scale
            ),
            Err(e) => println!(
                "{file}\t{}\t{} {ms:.1}ms",
                e.reason(),
                e.to_string().replace(['\n', '\t'], " ")
            ),
        }
    }
}
