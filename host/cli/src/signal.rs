//! Ctrl-C and SIGTERM end runs cleanly: workers finish their burst, pools report, and
//! the demo and bench remove their networks.

use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Sets `stop` on Ctrl-C or SIGTERM (once), inside a tokio runtime.
pub async fn stop_on_signal(stop: Arc<AtomicBool>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
    eprintln!("\nstopping ...");
    stop.store(true, Relaxed);
}

/// Sets `stop` on Ctrl-C or SIGTERM, from a thread of its own: for commands that run
/// without a tokio runtime of their own.
pub fn stop_on_signal_thread(stop: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || rt.block_on(stop_on_signal(stop)));
    Ok(())
}
