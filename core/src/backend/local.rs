//! The `local` backend: nodes are processes on this host. (Being written.)
use crate::backend::ClusterOptions;
use crate::Result;

/// A cluster of local nodes.
pub struct LocalCluster;

impl LocalCluster {
    /// Creates an empty local cluster.
    pub fn new(_options: ClusterOptions) -> Result<Self> {
        todo!()
    }
}

#[async_trait::async_trait]
impl crate::Cluster for LocalCluster {
    fn backend(&self) -> &'static str {
        "local"
    }
    async fn create_nodes(&self, _count: usize) -> Result<Vec<std::sync::Arc<dyn crate::Node>>> {
        todo!()
    }
    async fn cleanup(&self) -> Result<()> {
        todo!()
    }
}
