# One Strait site in an existing VPC. terraform init && terraform apply,
# then read the management token from SSM (see the module's README).

provider "aws" {
  region = "us-east-1"
}

variable "vpc_id" {
  type        = string
  description = "The VPC to deploy into."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Three private subnets in three zones."
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets for the gateways' load balancer."
}

variable "image_id" {
  type        = string
  description = "An AMI with strait, the AWS CLI and jq."
}

module "site" {
  source             = "../.."
  site               = "aws-east"
  vpc_id             = var.vpc_id
  subnet_ids         = var.private_subnet_ids
  gateway_subnet_ids = var.public_subnet_ids
  image_id           = var.image_id
  site_cidrs         = ["10.10.0.0/16"]
  peer_gateway_cidrs = ["0.0.0.0/0"] # tighten to your other sites' gateway addresses
  publish_bundle     = true
}

output "gateway_addresses" {
  value = module.site.gateway_addresses
}

output "api_address" {
  value = module.site.api_address
}

output "bundle_endpoint" {
  value = module.site.bundle_endpoint
}
