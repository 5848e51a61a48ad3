//! Writes small valid event logs into a folder: seeds for the fuzz target
//! (`cargo run -p sluice-eventlog --example seed -- fuzz/corpus/eventlog_reader`).

use sluice_eventlog::Writer;
use sluice_proto::sluice::v1::{CloudEvent, EventLogHeader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: seed <folder>")?;
    std::fs::create_dir_all(&dir)?;
    for n in [0_u64, 1, 3, 40] {
        let header = EventLogHeader {
            writer: "seed".into(),
            filter: "orders.>".into(),
            ..EventLogHeader::default()
        };
        let mut w = Writer::new(Vec::new(), &header)?;
        for i in 0..n {
            w.append(&CloudEvent {
                id: format!("id-{i}"),
                r#type: "shop.orders.v1.OrderPlaced".into(),
                broker_subject: "orders.order.placed".into(),
                data: vec![i as u8; (i % 7) as usize],
                ..CloudEvent::default()
            })?;
        }
        std::fs::write(format!("{dir}/seed-{n}.sluice"), w.finish()?)?;
    }
    Ok(())
}
