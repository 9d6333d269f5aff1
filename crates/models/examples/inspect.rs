//! Lists the tensors of a weight file (name, dtype, shape, sum): `cargo run -p geoloc-models --example inspect -- FILE [KEY]`.
fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: inspect FILE [KEY]");
    let key = args.next();
    match geoloc_models::checkpoint::load(std::path::Path::new(&path), key.as_deref()) {
        Ok(ck) => {
            println!("{:?}: {} tensors", ck.format, ck.tensors.len());
            for (name, t) in &ck.tensors {
                let sum = t
                    .to_dtype(candle_core::DType::F64)
                    .and_then(|t| t.sum_all())
                    .and_then(|s| s.to_scalar::<f64>())
                    .unwrap_or(f64::NAN);
                println!("{name}\t{:?}\t{:?}\tsum {sum}", t.dtype(), t.dims());
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
