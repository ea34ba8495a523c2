//! The `netns` backend: one network namespace per node. (Being written.)
use crate::backend::ClusterOptions;
use crate::Result;

/// A cluster of netns nodes.
pub struct NetnsCluster;

impl NetnsCluster {
    /// Creates an empty local cluster.
    pub async fn new(_options: ClusterOptions) -> Result<Self> {
        todo!()
    }
}

#[async_trait::async_trait]
impl crate::Cluster for NetnsCluster {
    fn backend(&self) -> &'static str {
        "netns"
    }
    async fn create_nodes(&self, _count: usize) -> Result<Vec<std::sync::Arc<dyn crate::Node>>> {
        todo!()
    }
    async fn cleanup(&self) -> Result<()> {
        todo!()
    }
}

/// Whether the netns backend can run here.
pub fn availability() -> Result<(), String> {
    Err("not written yet".into())
}
