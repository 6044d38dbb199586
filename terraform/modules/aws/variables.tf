variable "site" {
  type        = string
  description = "The site's name, a DNS label (e.g. aws-east). Names the trust domain <site>.strait and tags every resource."
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.site))
    error_message = "site must be a DNS label: lowercase letters, digits and hyphens, at most 63 characters."
  }
}

variable "vpc_id" {
  type        = string
  description = "The existing VPC the site is deployed into."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets, one per availability zone (at least 3). Server i runs in subnet i modulo their number; gateways and load balancers span all of them."
  validation {
    condition     = length(var.subnet_ids) >= 3
    error_message = "give at least 3 subnets in different zones, so that a zone's loss leaves a quorum."
  }
}

variable "gateway_subnet_ids" {
  type        = list(string)
  description = "Subnets for the gateways' network load balancer (public subnets for an internet-facing one). Defaults to subnet_ids."
  default     = []
}

variable "image_id" {
  type        = string
  description = "An AMI with /usr/local/bin/strait and the AWS CLI installed (e.g. built with Packer from a release)."
}

variable "server_count" {
  type        = number
  description = "Servers in the site's Raft group: 3 or 5."
  default     = 3
  validation {
    condition     = contains([3, 5], var.server_count)
    error_message = "server_count must be 3 or 5."
  }
}

variable "gateway_count" {
  type        = number
  description = "Gateways behind the network load balancer (at least 2)."
  default     = 2
  validation {
    condition     = var.gateway_count >= 2
    error_message = "run at least 2 gateways: they fail over between each other."
  }
}

variable "server_instance_type" {
  type        = string
  description = "EC2 instance type of servers."
  default     = "m6i.large"
}

variable "gateway_instance_type" {
  type        = string
  description = "EC2 instance type of gateways (network-bound: pick one with enough bandwidth)."
  default     = "c6in.large"
}

variable "data_volume_size" {
  type        = number
  description = "Size in GiB of each server's persistent data volume (Raft log and snapshots)."
  default     = 50
}

variable "site_cidrs" {
  type        = list(string)
  description = "CIDRs inside the site allowed to reach the servers' API and DNS ports (workloads, agents, operators)."
}

variable "peer_gateway_cidrs" {
  type        = list(string)
  description = "CIDRs of other sites' gateways: the only traffic from outside the site, and only to the gateway port."
  default     = []
}

variable "internet_facing_gateways" {
  type        = bool
  description = "Whether the gateways' load balancer is internet-facing (sites reach each other over the internet) or internal (over a private interconnect)."
  default     = true
}

variable "api_port" {
  type        = number
  description = "The servers' port for Raft and the API (mTLS)."
  default     = 7400
}

variable "bundle_port" {
  type        = number
  description = "The servers' SPIFFE bundle endpoint port (HTTPS)."
  default     = 7401
}

variable "gateway_port" {
  type        = number
  description = "The gateways' port, the only one open between sites."
  default     = 8443
}

variable "mesh_domain" {
  type        = string
  description = "The mesh DNS domain, forwarded to the servers by a Route 53 Resolver rule."
  default     = "mesh"
}

variable "virtual_ip_cidr" {
  type        = string
  description = "Where virtual IPs of imported services come from; route it to the gateways inside the site."
  default     = "240.0.0.0/16"
}

variable "dns_upstreams" {
  type        = list(string)
  description = "Resolvers (ip:port) for names outside the mesh domain; the VPC resolver by default."
  default     = ["169.254.169.253:53"]
}

variable "lb_host_number" {
  type        = number
  description = "The host number, in each subnet, of the internal load balancer's fixed address (the API and DNS address, and the Resolver rule's target)."
  default     = 10
}

variable "resolver_endpoint_security_group_ids" {
  type        = list(string)
  description = "Security groups for the Route 53 Resolver outbound endpoint; one allowing DNS to the site is created when empty."
  default     = []
}

variable "publish_bundle" {
  type        = bool
  description = "Create an S3 bucket and have the servers publish the site's trust bundle to it (for https_web federation through static hosting)."
  default     = false
}

variable "cloudmap_namespace" {
  type        = string
  description = "A Cloud Map namespace whose services are imported into the catalog (empty: no sync)."
  default     = ""
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
