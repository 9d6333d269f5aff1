//! Writes the upright decode of each input as PNG: `upright OUT_DIR FILES...` (to look at).
fn main() {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().expect("usage: upright OUT_DIR FILES..."));
    for f in args {
        let bytes = std::fs::read(&f).expect("read");
        match geoloc_imaging::decode::decode(&bytes, &Default::default(), None) {
            Ok(d) => {
                let name = std::path::Path::new(&f)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                d.image
                    .save(out.join(format!("{name}.png")))
                    .expect("write");
                println!(
                    "{f}: {}x{} orientation {}",
                    d.image.width(),
                    d.image.height(),
                    d.info.orientation.exif_value()
                );
            }
            Err(e) => println!("{f}: {e}"),
        }
    }
}
