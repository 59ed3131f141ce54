//! Worker threads for the work the FUSE loop must not wait on: decompressing chunks for reads,
//! reading trees, and prefetching. Demand work (a process is waiting) goes before prefetches.

use crossbeam_channel::{Receiver, Sender, select_biased, unbounded};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Clone)]
pub struct Pool {
    demand: Sender<Job>,
    prefetch: Sender<Job>,
}

impl Pool {
    pub fn new(threads: usize) -> Pool {
        let (demand, demand_rx) = unbounded::<Job>();
        let (prefetch, prefetch_rx) = unbounded::<Job>();
        for i in 0..threads.max(1) {
            let (d, p) = (demand_rx.clone(), prefetch_rx.clone());
            std::thread::Builder::new()
                .name(format!("rewind-fs-{i}"))
                .spawn(move || work(&d, &p))
                .expect("spawn a worker thread");
        }
        Pool { demand, prefetch }
    }

    /// Run `job` soon; someone waits for it.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        // Workers live as long as the process: sending cannot fail while they run.
        let _ = self.demand.send(Box::new(job));
    }

    /// Run `job` when no demand work is queued.
    pub fn prefetch(&self, job: impl FnOnce() + Send + 'static) {
        let _ = self.prefetch.send(Box::new(job));
    }
}

fn work(demand: &Receiver<Job>, prefetch: &Receiver<Job>) {
    loop {
        if let Ok(job) = demand.try_recv() {
            job();
            continue;
        }
        let job = select_biased! {
            recv(demand) -> j => j,
            recv(prefetch) -> j => j,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn runs_demand_and_prefetch_jobs() {
        let pool = Pool::new(2);
        let (tx, rx) = mpsc::channel();
        for i in 0..10 {
            let tx = tx.clone();
            if i % 2 == 0 {
                pool.run(move || tx.send(i).unwrap());
            } else {
                pool.prefetch(move || tx.send(i).unwrap());
            }
        }
        let mut got: Vec<i32> = (0..10).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
